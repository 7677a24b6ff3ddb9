"""The import format: patients as JSON, read as a stream and validated.

A file holds a JSON array of patients, or JSON lines (one patient a line) for inputs larger than
memory; both are read one patient at a time. A patient:

    {"patient_id": "P000001", "birth_year": 1956, "sex": "F", "state": "CA",
     "diagnoses":     [{"code": "E11.65",  "date": "2019-03-02"}, ...],   ICD-10-CM
     "prescriptions": [{"code": "A10BA02", "date": "2019-03-02"}, ...],   ATC
     "procedures":    [{"code": "99213",   "date": "2019-03-02"}, ...],   CPT (optional)
     "endpoint": 1,                 the patient-level label to fine-tune on (0 or 1)
     "length_of_stay": 9.0}         days, optional (the PLOS pretraining target)

Events on the same date form a visit. Codes are checked by `codes.is_valid`; dates are ISO dates.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from experiments.exmed_bert import codes
from medrepro.errors import DataError

EVENT_FIELDS = {"diagnoses": "icd10cm", "prescriptions": "atc", "procedures": "cpt"}
SEXES = ("F", "M", "U")


@dataclass(frozen=True)
class Event:
    day: date
    kind: str
    code: str


@dataclass(frozen=True)
class Patient:
    patient_id: str
    birth_year: int
    sex: str
    state: str
    events: tuple[Event, ...]  # sorted by date, then in file order
    endpoint: int
    length_of_stay: float | None


@dataclass(frozen=True)
class BadCode:
    file: str
    patient_id: str
    kind: str
    code: str

    def __str__(self) -> str:
        return f"{self.file}: patient {self.patient_id}: {self.kind} code {self.code!r}"


def iter_json(path: Path, chunk_size: int = 1 << 20) -> Iterator[dict]:
    """The objects of a JSON array or of JSON lines, one at a time, without reading the file whole."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buffer, pos, started = "", 0, False
        while True:
            chunk = f.read(chunk_size)
            buffer = buffer[pos:] + chunk
            pos = 0
            while True:
                # Skip whitespace and the array's punctuation between objects.
                while pos < len(buffer) and buffer[pos] in " \t\r\n,[]":
                    started = started or buffer[pos] == "["
                    pos += 1
                if pos >= len(buffer):
                    break
                try:
                    obj, end = decoder.raw_decode(buffer, pos)
                except json.JSONDecodeError as e:
                    if not chunk:
                        raise DataError(f"{path}: malformed JSON near character {e.pos}: {e.msg}; the import format "
                                        "is a JSON array of patients or one patient per line") from None
                    break  # the object continues in the next chunk
                if end == len(buffer) and chunk:
                    break  # a number or object may continue in the next chunk
                if not isinstance(obj, dict):
                    raise DataError(f"{path}: expected a patient object, found {type(obj).__name__}")
                yield obj
                pos = end
            if not chunk:
                return


def _field(record: dict, name: str, kind: type, path: Path, pid: str):
    value = record.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DataError(f"{path}: patient {pid}: field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def parse_patient(record: dict, path: Path, bad: list[BadCode]) -> Patient:
    """One validated patient; invalid codes are appended to `bad` and left out."""
    pid = str(record.get("patient_id", "?"))
    _field(record, "patient_id", str, path, pid)
    birth_year = _field(record, "birth_year", int, path, pid)
    sex = _field(record, "sex", str, path, pid).upper()[:1]
    if sex not in SEXES:
        raise DataError(f"{path}: patient {pid}: sex {record['sex']!r} is not one of F, M, U")
    endpoint = record.get("endpoint")
    if endpoint not in (0, 1) or isinstance(endpoint, bool):
        raise DataError(f"{path}: patient {pid}: endpoint must be 0 or 1, got {endpoint!r}")
    los = record.get("length_of_stay")
    if los is not None and (not isinstance(los, int | float) or isinstance(los, bool) or los < 0):
        raise DataError(f"{path}: patient {pid}: length_of_stay must be a number of days >= 0, got {los!r}")
    events = []
    for name, kind in EVENT_FIELDS.items():
        entries = record.get(name, [])
        if not isinstance(entries, list):
            raise DataError(f"{path}: patient {pid}: {name!r} must be a list of {{code, date}} objects")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("code"), str):
                raise DataError(f"{path}: patient {pid}: {name} entry {entry!r} needs a string code and a date")
            try:
                day = date.fromisoformat(str(entry.get("date")))
            except ValueError:
                raise DataError(f"{path}: patient {pid}: {name} code {entry['code']}: date {entry.get('date')!r} "
                                "is not an ISO date (YYYY-MM-DD)") from None
            code = entry["code"].strip().upper()
            if not codes.is_valid(kind, code):
                bad.append(BadCode(str(path), pid, kind, entry["code"]))
                continue
            events.append(Event(day, kind, codes.normalize_icd(code) if kind == "icd10cm" else code))
    events.sort(key=lambda e: e.day)  # stable: same-day events keep the file's order
    return Patient(pid, birth_year, sex, _field(record, "state", str, path, pid), tuple(events), endpoint,
                   None if los is None else float(los))


def read_patients(path: Path, on_bad_code: str, show: int = 5, dropped: list[BadCode] | None = None
                  ) -> Iterator[Patient]:
    """Validated patients of `path`, streamed. With `on_bad_code="stop"` the first bad code ends the
    read with a DataError listing up to `show` of those in the file; with "drop" they go to `dropped`."""
    if not path.is_file():
        raise DataError(f"patients file {path} not found: set data.patients to a JSON file in the import format")
    seen: set[str] = set()
    for record in iter_json(path):
        bad: list[BadCode] = []
        patient = parse_patient(record, path, bad)
        if patient.patient_id in seen:
            raise DataError(f"{path}: patient_id {patient.patient_id} appears twice; ids must be unique")
        seen.add(patient.patient_id)
        if bad and on_bad_code == "stop":
            first = _first_bad_codes(path, show)
            raise DataError(f"invalid codes (the first {len(first)}): " + "; ".join(map(str, first))
                            + "; fix them, or set data.on_bad_code=drop to drop and count them")
        if dropped is not None:
            dropped += bad
        yield patient


def _first_bad_codes(path: Path, show: int) -> list[BadCode]:
    """The first `show` bad codes of the file, for the message (it is read again, up to the last of them)."""
    found: list[BadCode] = []
    for record in iter_json(path):
        parse_patient(record, path, found)
        if len(found) >= show:
            break
    return found[:show]
