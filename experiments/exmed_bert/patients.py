"""The import format: patients as JSON, read as a stream and validated.

A file holds a JSON array of patients, or JSON lines (one patient a line) for inputs larger than
memory; both are read one patient at a time. A patient:

    {"patient_id": "P000001", "birth_year": 1956, "sex": "F", "state": "CA",
     "diagnoses":     [{"code": "E11.65",  "date": "2019-03-02"}, ...],   ICD-10-CM
     "prescriptions": [{"code": "A10BA02", "date": "2019-03-02"}, ...],   ATC
     "procedures":    [{"code": "99213",   "date": "2019-03-02"}, ...],   CPT (optional)
     "index_date": "2019-06-01",    when the prediction is made (data.index_date: field)
     "endpoint": 1,                 the patient-level label to fine-tune on (0 or 1)
     "length_of_stay": 9.0}         days, optional (the PLOS pretraining target)

Events on the same date form a visit. Events on or after the index date are left out here, before
anything else sees them: they are the likeliest to follow the outcome, and keep-last truncation would
keep exactly those. Codes are checked by `codes`; dates are ISO dates. ICD-10-CM codes that the
bundled table no longer has (older releases) follow `data.retired_icd`.
"""

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from experiments.exmed_bert import codes
from experiments.exmed_bert.config import DataConfig
from medrepro.errors import DataError

EVENT_FIELDS = {"diagnoses": "icd10cm", "prescriptions": "atc", "procedures": "cpt"}
SEXES = ("F", "M", "U")
DROPPED = ""  # a code left out by data.retired_icd (counted in the report), unlike a bad code (None)


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
    events: tuple[Event, ...]  # before the index date, sorted by date, then in file order
    endpoint: int
    length_of_stay: float | None
    after_index: int  # events on or after the index date, left out


@dataclass(frozen=True)
class BadCode:
    file: str
    patient_id: str
    kind: str
    code: str

    def __str__(self) -> str:
        return f"{self.file}: patient {self.patient_id}: {self.kind} code {self.code!r}"


@dataclass
class ReadReport:
    """What the reader left out or changed, for summary.json."""
    dropped: list[BadCode] = field(default_factory=list)  # bad codes, under on_bad_code=drop
    # Retired ICD-10-CM codes: "code → ancestor" or "code → dropped", with their counts.
    retired: Counter[str] = field(default_factory=Counter)
    after_index_events: int = 0
    after_index_patients: int = 0

    def summary(self, first: int = 20) -> dict:
        common = sorted(self.retired.items(), key=lambda kv: (-kv[1], kv[0]))[:first]
        return {"dropped_codes": {"count": len(self.dropped), "first": [str(b) for b in self.dropped[:first]]},
                "retired_icd": {"count": sum(self.retired.values()), "most_common": dict(common)},
                "after_index": {"events": self.after_index_events, "patients": self.after_index_patients}}


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


def _date(value, what: str, path: Path, pid: str) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise DataError(f"{path}: patient {pid}: {what}: date {value!r} is not an ISO date (YYYY-MM-DD)") from None


def _index_date(record: dict, data: DataConfig, path: Path, pid: str) -> date | None:
    if data.index_date == "none":
        return None
    if record.get("index_date") is None:
        raise DataError(f"{path}: patient {pid}: no index_date: add each patient's index date (events on or after "
                        "it are left out), or set data.index_date=none to use every event (the endpoint may leak)")
    return _date(record["index_date"], "index_date", path, pid)


def _code(kind: str, raw: str, data: DataConfig, report: ReadReport) -> str | None:
    """The code to keep; None when it is bad (the caller records it), DROPPED when the policy drops it."""
    code = raw.strip().upper()
    if kind != "icd10cm":
        return code if codes.is_valid(kind, code) else None
    resolved, how = codes.resolve_icd(code)
    if how == "valid":
        return resolved
    if how == "malformed" or data.retired_icd == "stop":
        return None
    if how == "ancestor" and data.retired_icd == "ancestor":
        report.retired[f"{code} → {resolved}"] += 1
        return resolved
    report.retired[f"{code} → dropped"] += 1
    return DROPPED


def parse_patient(record: dict, path: Path, data: DataConfig, bad: list[BadCode], report: ReadReport) -> Patient:
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
    index_date = _index_date(record, data, path, pid)
    events, after_index = [], 0
    for name, kind in EVENT_FIELDS.items():
        entries = record.get(name, [])
        if not isinstance(entries, list):
            raise DataError(f"{path}: patient {pid}: {name!r} must be a list of {{code, date}} objects")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("code"), str):
                raise DataError(f"{path}: patient {pid}: {name} entry {entry!r} needs a string code and a date")
            day = _date(entry.get("date"), f"{name} code {entry['code']}", path, pid)
            if index_date is not None and day >= index_date:
                after_index += 1
                continue
            code = _code(kind, entry["code"], data, report)
            if code is None:
                bad.append(BadCode(str(path), pid, kind, entry["code"]))
            elif code != DROPPED:
                events.append(Event(day, kind, code))
    events.sort(key=lambda e: e.day)  # stable: same-day events keep the file's order
    return Patient(pid, birth_year, sex, _field(record, "state", str, path, pid), tuple(events), endpoint,
                   None if los is None else float(los), after_index)


def read_patients(path: Path, data: DataConfig, report: ReadReport | None = None, show: int = 5
                  ) -> Iterator[Patient]:
    """Validated patients of `path`, streamed. With `data.on_bad_code="stop"` the first bad code ends the
    read with a DataError listing up to `show` of those in the file; with "drop" they go to `report`,
    as do retired ICD-10-CM codes and the events left out after the index date."""
    report = ReadReport() if report is None else report
    if not path.is_file():
        raise DataError(f"patients file {path} not found: set data.patients to a JSON file in the import format")
    seen: set[str] = set()
    for record in iter_json(path):
        bad: list[BadCode] = []
        patient = parse_patient(record, path, data, bad, report)
        if patient.patient_id in seen:
            raise DataError(f"{path}: patient_id {patient.patient_id} appears twice; ids must be unique")
        seen.add(patient.patient_id)
        if bad and data.on_bad_code == "stop":
            first = _first_bad_codes(path, data, show)
            raise DataError(f"invalid codes (the first {len(first)}): " + "; ".join(map(str, first))
                            + "; fix them, or set data.on_bad_code=drop to drop and count them")
        report.dropped += bad
        report.after_index_events += patient.after_index
        report.after_index_patients += patient.after_index > 0
        yield patient


def _first_bad_codes(path: Path, data: DataConfig, show: int) -> list[BadCode]:
    """The first `show` bad codes of the file, for the message (it is read again, up to the last of them)."""
    found: list[BadCode] = []
    for record in iter_json(path):
        parse_patient(record, path, data, found, ReadReport())
        if len(found) >= show:
            break
    return found[:show]
