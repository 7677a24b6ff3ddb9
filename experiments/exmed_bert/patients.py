"""The import format: patients as JSON, read as a stream and validated.

A file holds one of two shapes, both read one patient at a time (inputs larger than memory):
- a JSON array of patient objects: `[{"patient_id": ...}, {"patient_id": ...}]`;
- JSON lines: one patient object a line, nothing around them.
Anything else is refused with one line saying what was found: a scalar or an empty file, an array
item that is not an object, or an object that is not a patient first, such as a wrapper
`{"patients": [...]}` (its list is the file). A patient:

    {"patient_id": "P000001", "birth_year": 1956, "sex": "F", "state": "CA",
     "diagnoses":     [{"code": "E11.65",  "date": "2019-03-02"}, ...],   ICD-10-CM
     "prescriptions": [{"code": "A10BA02", "date": "2019-03-02"}, ...],   ATC
     "procedures":    [{"code": "99213",   "date": "2019-03-02"}, ...],   CPT (optional)
     "index_date": "2019-06-01",    when the prediction is made (data.index_date: field)
     "endpoint": 1,                 the patient-level label to fine-tune on (0 or 1)
     "length_of_stay": 9.0}         days, optional (the PLOS pretraining target)

Events on the same date form a visit. Events on or after the index date are left out here, before
anything else sees them: they are the likeliest to follow the outcome, and keep-last truncation would
keep exactly those. Codes are checked by `codes`; dates are ISO dates (YYYY-MM-DD). An event with a bad
code or date follows `data.on_bad_code`; ICD-10-CM codes that the bundled table no longer has (older
releases) follow `data.retired_icd`.
"""

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TextIO

from experiments.exmed_bert import codes
from experiments.exmed_bert.config import DataConfig
from medrepro.errors import DataError

EVENT_FIELDS = {"diagnoses": "icd10cm", "prescriptions": "atc", "procedures": "cpt"}
PATIENT_FIELDS = ("patient_id", "birth_year", "sex", "state", *EVENT_FIELDS, "index_date", "endpoint",
                  "length_of_stay")
SHAPES = "expected a JSON array of patients or one patient object per line (JSON lines)"
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # fromisoformat alone also takes 20200102 and 2020-W01-1
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
    # Before the index date, sorted by date; same-day events: diagnoses, prescriptions, procedures, each
    # in file order.
    events: tuple[Event, ...]
    endpoint: int
    length_of_stay: float | None
    after_index: int  # events on or after the index date, left out


@dataclass(frozen=True)
class BadEvent:
    """An event with a bad code, or with a date that is not an ISO date (`date`, its repr, set; the code
    is then unchecked)."""
    file: str
    patient_id: str
    kind: str
    code: str
    date: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: patient {self.patient_id}: {self.kind} code {self.code!r}"
        return where if self.date is None else f"{where}: date {self.date} is not an ISO date (YYYY-MM-DD)"


@dataclass
class ReadReport:
    """What the reader left out or changed, for summary.json."""
    dropped: list[BadEvent] = field(default_factory=list)  # bad codes and dates, under on_bad_code=drop
    # Retired ICD-10-CM codes: "code → ancestor" or "code → dropped", with their counts.
    retired: Counter[str] = field(default_factory=Counter)
    after_index_events: int = 0
    after_index_patients: int = 0

    def summary(self, first: int = 20) -> dict:
        common = sorted(self.retired.items(), key=lambda kv: (-kv[1], kv[0]))[:first]
        bad_codes = [str(b) for b in self.dropped if b.date is None]
        bad_dates = [str(b) for b in self.dropped if b.date is not None]
        return {"dropped_codes": {"count": len(bad_codes), "first": bad_codes[:first]},
                "dropped_dates": {"count": len(bad_dates), "first": bad_dates[:first]},
                "retired_icd": {"count": sum(self.retired.values()), "most_common": dict(common)},
                "after_index": {"events": self.after_index_events, "patients": self.after_index_patients}}


class _Chars:
    """A text file read chunk by chunk: its next character that is not white space, and the JSON value
    there, with the line it starts on (for messages)."""

    def __init__(self, f: TextIO, path: Path, chunk_size: int) -> None:
        self.f, self.path, self.chunk_size = f, path, chunk_size
        self.decoder = json.JSONDecoder()
        self.buffer, self.pos, self.line = "", 0, 1

    def _more(self) -> bool:
        """Append the next chunk to what is left of the buffer; False at the end of the file."""
        chunk = self.f.read(self.chunk_size)
        self.buffer, self.pos = self.buffer[self.pos:] + chunk, 0
        return bool(chunk)

    def peek(self) -> str:
        """The next character that is not white space, left in place; "" at the end of the file."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos] in " \t\r\n":
                self.line += self.buffer[self.pos] == "\n"
                self.pos += 1
            if self.pos < len(self.buffer) or not self._more():
                return self.buffer[self.pos:self.pos + 1]

    def take(self) -> str:
        """The next character that is not white space, consumed."""
        c = self.peek()
        self.pos += len(c)
        return c

    def value(self) -> object:
        """The JSON value at the next character that is not white space, consumed."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as e:
                line = self.line + self.buffer.count("\n", self.pos, e.pos)
                if self._more():
                    continue  # the value goes on in the next chunk
                raise DataError(f"{self.path}: line {line}: malformed JSON: {e.msg}; {SHAPES}") from None
            if end == len(self.buffer) and self._more():
                continue  # a number at the end of the buffer may go on in the next chunk
            self.line += self.buffer.count("\n", self.pos, end)
            self.pos = end
            return value


def _json_kind(value: object) -> str:
    """A decoded value's JSON name, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "null")


def iter_json(path: Path, chunk_size: int = 1 << 20) -> Iterator[dict]:
    """The patient objects of a JSON array or of JSON lines, one at a time, without reading the file
    whole; any other shape is a DataError naming what was found."""
    with open(path, encoding="utf-8-sig") as f:  # -sig: files exported with a byte order mark read too
        chars = _Chars(f, path, chunk_size)
        first = chars.peek()
        if first == "[":
            yield from _array_items(chars)
        elif first == "{":
            yield from _json_lines(chars)
        elif not first:
            raise DataError(f"{path}: the file is empty; {SHAPES}")
        else:
            raise DataError(f"{path}: the top level is {_json_kind(chars.value())}; {SHAPES}")


def _object(chars: _Chars) -> dict:
    """The next value, which must be a patient object."""
    chars.peek()  # up to the value, so that the line is the one it starts on
    line, value = chars.line, chars.value()
    if not isinstance(value, dict):
        raise DataError(f"{chars.path}: line {line}: expected a patient object, found {_json_kind(value)}")
    return value


def _array_items(chars: _Chars) -> Iterator[dict]:
    """The objects of the array that starts at the next character, then nothing but white space."""
    chars.take()  # [
    if chars.peek() == "]":
        chars.take()
    else:
        while True:
            yield _object(chars)
            line, after = chars.line, chars.take()
            if after == "]":
                break
            if after != ",":
                found = repr(after) if after else "the end of the file"
                raise DataError(f"{chars.path}: line {line}: expected ',' or ']' after a patient in the array, "
                                f"found {found}")
    if rest := chars.peek():
        raise DataError(f"{chars.path}: line {chars.line}: {rest!r} after the array's closing ']'; {SHAPES}")


def _json_lines(chars: _Chars) -> Iterator[dict]:
    """Objects one after the other, up to the end of the file; the first must look like a patient."""
    first = _object(chars)
    # A first object with none of a patient's fields is no patient: most likely a wrapper around the list.
    # Like any object it was decoded whole, so a wrapper is read into memory before it is refused.
    if not any(name in first for name in PATIENT_FIELDS):
        keys = ", ".join(map(repr, first)) or "none"
        lists = [name for name, value in first.items() if isinstance(value, list)]
        if lists:
            raise DataError(f"{chars.path}: the top level is an object with key(s) {keys}; {SHAPES}: e.g. write "
                            f"the list under {lists[0]!r} as the whole file")
        raise DataError(f"{chars.path}: the first object has none of a patient's fields ({', '.join(PATIENT_FIELDS)}),"
                        f" only key(s) {keys}; {SHAPES}")
    yield first
    while chars.peek():
        yield _object(chars)


def _field(record: dict, name: str, kind: type, path: Path, pid: str):
    value = record.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DataError(f"{path}: patient {pid}: field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def _iso_date(value: object) -> date | None:
    """`value` as a date when it is an ISO date (YYYY-MM-DD), else None."""
    if not isinstance(value, str) or _ISO_DATE.fullmatch(value) is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:  # shaped like a date, but no such day (2020-02-30)
        return None


def _index_date(record: dict, data: DataConfig, path: Path, pid: str) -> date | None:
    if data.index_date == "none":
        return None
    if record.get("index_date") is None:
        raise DataError(f"{path}: patient {pid}: no index_date: add each patient's index date (events on or after "
                        "it are left out), or set data.index_date=none to use every event (the endpoint may leak)")
    if (day := _iso_date(record["index_date"])) is None:
        raise DataError(f"{path}: patient {pid}: index_date {record['index_date']!r} is not an ISO date (YYYY-MM-DD)")
    return day


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


def parse_patient(record: dict, path: Path, data: DataConfig, bad: list[BadEvent], report: ReadReport) -> Patient:
    """One validated patient; events with a bad code or date are appended to `bad` and left out."""
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
            if (day := _iso_date(entry.get("date"))) is None:
                # Before or after the index date, nobody knows: a bad event either way, its code unchecked.
                bad.append(BadEvent(str(path), pid, kind, entry["code"], repr(entry.get("date"))))
                continue
            if index_date is not None and day >= index_date:
                after_index += 1
                continue
            code = _code(kind, entry["code"], data, report)
            if code is None:
                bad.append(BadEvent(str(path), pid, kind, entry["code"]))
            elif code != DROPPED:
                events.append(Event(day, kind, code))
    events.sort(key=lambda e: e.day)  # stable: same-day events keep the order above
    return Patient(pid, birth_year, sex, _field(record, "state", str, path, pid), tuple(events), endpoint,
                   None if los is None else float(los), after_index)


def read_patients(path: Path, data: DataConfig, report: ReadReport | None = None, show: int = 5
                  ) -> Iterator[Patient]:
    """Validated patients of `path`, streamed. With `data.on_bad_code="stop"` the first event with a bad
    code or date ends the read with a DataError listing the file's first `show` of them, in file order;
    with "drop" they go to `report`, as do retired ICD-10-CM codes and the events left out after the
    index date."""
    report = ReadReport() if report is None else report
    if not path.is_file():
        raise DataError(f"patients file {path} not found: set data.patients to a JSON file in the import format")
    seen: set[str] = set()
    for record in iter_json(path):
        bad: list[BadEvent] = []
        patient = parse_patient(record, path, data, bad, report)
        if patient.patient_id in seen:
            raise DataError(f"{path}: patient_id {patient.patient_id} appears twice; ids must be unique")
        seen.add(patient.patient_id)
        if bad and data.on_bad_code == "stop":
            first = _first_bad_events(path, data, show)
            raise DataError(f"bad codes or dates (the first {len(first)} in file order): " + "; ".join(map(str, first))
                            + "; fix them, or set data.on_bad_code=drop to drop and count them")
        report.dropped += bad
        report.after_index_events += patient.after_index
        report.after_index_patients += patient.after_index > 0
        yield patient


def _first_bad_events(path: Path, data: DataConfig, show: int) -> list[BadEvent]:
    """The file's first `show` events with a bad code or date, for the message (it is read again, up to
    the last of them)."""
    found: list[BadEvent] = []
    for record in iter_json(path):
        parse_patient(record, path, data, found, ReadReport())
        if len(found) >= show:
            break
    return found[:show]
