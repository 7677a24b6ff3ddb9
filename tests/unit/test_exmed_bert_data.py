"""exmed_bert data: code validation and hierarchy, the streaming import reader, conversion."""

import json

import pytest

from experiments.exmed_bert import codes, dataset
from experiments.exmed_bert.config import DataConfig
from experiments.exmed_bert.patients import ReadReport, iter_json, read_patients
from experiments.exmed_bert.prepare import convert, split_of
from medrepro.errors import DataError


@pytest.mark.parametrize("code", ["S72.001A", "T36.0X1A", "M1A.0", "E11.65", "E11", "Z00.00"])
def test_icd10cm_codes_of_the_table_are_valid(code):
    assert codes.is_valid("icd10cm", code)


@pytest.mark.parametrize("code", ["E11.999", "S72.001Z", "A00-B99", "1", "E1", "XYZ"])
def test_icd10cm_codes_outside_the_table_are_not(code):
    assert not codes.is_valid("icd10cm", code)


def test_icd10cm_undotted_codes_are_normalised():
    assert codes.normalize_icd("s72001a") == "S72.001A"


def test_ancestors_follow_the_icd_table_and_the_five_atc_levels():
    assert codes.ancestors("icd10cm", "E11.65") == ["E11.6", "E11"]
    assert codes.ancestors("icd10cm", "T36.0X1A") == ["T36.0X1", "T36.0X", "T36.0", "T36"]
    assert codes.ancestors("atc", "N02BE01") == ["N02BE", "N02B", "N02", "N"]
    assert codes.ancestors("cpt", "99213") == []


@pytest.mark.parametrize(("kind", "code", "valid"), [
    ("atc", "N02BE01", True), ("atc", "N02B", True), ("atc", "N", True), ("atc", "N02BE0", False),
    ("atc", "n02be01", False), ("atc", "102BE01", False), ("cpt", "99213", True), ("cpt", "0001F", True),
    ("cpt", "9921", False)])
def test_atc_and_cpt_by_structure(kind, code, valid):
    assert codes.is_valid(kind, code) is valid


@pytest.mark.parametrize(("code", "valid"), [
    ("N02BE01", True), ("A10BA02", True), ("V03AB", True), ("S01", True),
    ("Z99ZZ99", False),  # Z is none of the 14 anatomical main groups
    ("Q01AA01", False),  # ATCvet, not human ATC
    ("N00BE01", False),  # level 2 is numbered from 01
    ("N02BE00", False),  # level 5 too
    ("N2BE01", False), ("N02B1E01", False), ("n02be01", False)])
def test_atc_codes_follow_the_who_structure_level_by_level(code, valid):
    assert codes.is_valid("atc", code) is valid


def test_the_synthetic_atc_codes_are_valid():
    """The generator draws main groups from the 14, level 2 from 01 to 98 and substances 01 to 04."""
    from experiments.exmed_bert import synthetic

    for seed in range(10):
        assert all(codes.is_valid("atc", c) for family in synthetic.code_families(seed, n_atc=50)["atc"]
                   for c in family)


def _patient(pid: str, endpoint: int = 0, **extra) -> dict:
    return {"patient_id": pid, "birth_year": 1950, "sex": "F", "state": "CA",
            "diagnoses": [{"code": "E11.65", "date": "2020-01-02"}, {"code": "I10", "date": "2020-03-01"}],
            "prescriptions": [{"code": "A10BA02", "date": "2020-01-02"}],
            "procedures": [{"code": "99213", "date": "2020-03-01"}], "endpoint": endpoint, "length_of_stay": 3.0,
            "index_date": "2021-01-01", **extra}


def test_the_reader_streams_arrays_and_json_lines_across_chunk_boundaries(tmp_path):
    patients = [_patient(f"P{i}", i % 2) for i in range(30)]
    array, lines = tmp_path / "p.json", tmp_path / "p.jsonl"
    array.write_text(json.dumps(patients, indent=2))
    lines.write_text("".join(json.dumps(p) + "\n" for p in patients))
    for path in (array, lines):
        assert list(iter_json(path, chunk_size=17)) == patients


@pytest.mark.parametrize(("code", "resolved"), [
    ("E11.65", ("E11.65", "valid")), ("e1165", ("E11.65", "valid")),
    ("E11.659", ("E11.65", "ancestor")),  # a sixth character the table does not have
    ("K35.8X", ("K35.8", "ancestor")), ("U99.99", (None, "unknown")),
    ("E11-9", (None, "malformed")), ("1E1.9", (None, "malformed")), ("E1", (None, "malformed"))])
def test_icd10cm_codes_absent_from_the_table_resolve_to_their_nearest_ancestor(code, resolved):
    assert codes.resolve_icd(code) == resolved


def test_json_lines_are_read_as_patients(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(_patient(f"P{i}")) + "\n" for i in range(3)), encoding="utf-8-sig")
    assert [p.patient_id for p in read_patients(path, DataConfig())] == ["P0", "P1", "P2"]


def test_a_wrapper_object_is_refused_saying_what_to_write(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"patients": [_patient("P1"), _patient("P2")]}, indent=1))
    with pytest.raises(DataError) as e:
        list(read_patients(path, DataConfig()))
    assert str(e.value) == (f"{path}: the top level is an object with key(s) 'patients'; expected a JSON array of "
                            "patients or one patient object per line (JSON lines): e.g. write the list under "
                            "'patients' as the whole file")


@pytest.mark.parametrize(("text", "message"), [
    ("42\n", "the top level is a number; expected a JSON array of patients"),
    ('"patients.csv"', "the top level is a string; expected a JSON array of patients"),
    ("", "the file is empty; expected a JSON array of patients"),
    ('{"version": 2}', "the first object has none of a patient's fields (patient_id, "),
    ('[\n{"patient_id": "P1"},\n[1, 2]\n]', "line 3: expected a patient object, found an array"),
    ('[{"patient_id": "P1"}] [', "line 1: '[' after the array's closing ']'"),
    ('[{"patient_id": "P1"}\n{"patient_id": "P2"}]', "line 1: expected ',' or ']' after a patient in the array, "
                                                     "found '{'"),
    ('{"patient_id": "P1"}\n{"patient_id": "P2",}', "line 2: malformed JSON: Expecting property name")])
def test_other_shapes_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        list(iter_json(path, chunk_size=7))
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)


def test_a_bad_code_stops_naming_file_patient_and_code(tmp_path):
    bad = _patient("P2", diagnoses=[{"code": "E11-9", "date": "2020-01-02"}])
    worse = _patient("P3", prescriptions=[{"code": "N02BE0", "date": "2020-01-02"}])
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_patient("P1"), bad, worse]))
    with pytest.raises(DataError) as e:
        list(read_patients(path, DataConfig()))
    message = str(e.value)
    assert f"{path}: patient P2: icd10cm code 'E11-9'" in message and "patient P3: atc code 'N02BE0'" in message
    assert "on_bad_code=drop" in message and "\n" not in message


def test_dropping_bad_codes_counts_them_and_keeps_the_rest(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_patient("P1", diagnoses=[{"code": "E11-9", "date": "2020-01-02"},
                                                          {"code": "E11.9", "date": "2020-01-02"}])]))
    report = ReadReport()
    (patient,) = read_patients(path, DataConfig(on_bad_code="drop"), report)
    assert [b.code for b in report.dropped] == ["E11-9"]
    assert [e.code for e in patient.events if e.kind == "icd10cm"] == ["E11.9"]


@pytest.mark.parametrize(("policy", "kept", "retired"), [
    ("ancestor", ["E11.65", "E11.9"], {"E11.659 → E11.65": 1, "U99.99 → dropped": 1}),
    ("drop", ["E11.9"], {"E11.659 → dropped": 1, "U99.99 → dropped": 1})])
def test_retired_icd_codes_follow_the_policy_and_are_counted(tmp_path, policy, kept, retired):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_patient("P1", diagnoses=[{"code": "E11.659", "date": "2020-01-02"},
                                                          {"code": "U99.99", "date": "2020-01-03"},
                                                          {"code": "E11.9", "date": "2020-01-04"}])]))
    report = ReadReport()
    (patient,) = read_patients(path, DataConfig(retired_icd=policy), report)
    assert [e.code for e in patient.events if e.kind == "icd10cm"] == kept
    assert dict(report.retired) == retired and report.dropped == []
    assert report.summary()["retired_icd"] == {"count": 2, "most_common": retired}


def test_retired_icd_codes_are_bad_codes_under_stop(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_patient("P1", diagnoses=[{"code": "E11.659", "date": "2020-01-02"}])]))
    with pytest.raises(DataError, match=r"patient P1: icd10cm code 'E11\.659'"):
        list(read_patients(path, DataConfig(retired_icd="stop")))


def test_events_on_or_after_the_index_date_never_reach_the_model_input(tmp_path):
    """An outcome code recorded after the index date would leak the endpoint; it must be left out
    before the vocabulary is built and before keep-last truncation picks the latest positions."""
    leak = [{"code": "I21.09", "date": "2021-01-01"}, {"code": "I21.4", "date": "2021-02-01"}]
    patients = [_patient(f"P{i}", i % 2, diagnoses=_patient("x")["diagnoses"] + (leak if i % 2 else []))
                for i in range(40)]
    source, out = tmp_path / "p.json", tmp_path / "out"
    source.write_text(json.dumps(patients))
    out.mkdir()
    summary = convert(source, out, DataConfig(split=(0.5, 0.25, 0.25), max_length=5), seed=0)
    vocab = json.loads((out / "vocab.json").read_text())["tokens"]
    assert not any(t.startswith("I21") for t in vocab)
    assert summary["after_index"] == {"events": 40, "patients": 20}
    for split in dataset.SPLITS:
        for line in (out / f"{split}.jsonl").read_text().splitlines():
            assert [vocab[t] for t in json.loads(line)["tokens"]][-2:] == ["99213:cpt", "[SEP]"]

    everything = tmp_path / "all"
    everything.mkdir()
    convert(source, everything, DataConfig(split=(0.5, 0.25, 0.25), index_date="none"), seed=0)
    assert "I21.09:icd10cm" in json.loads((everything / "vocab.json").read_text())["tokens"]


def test_a_patient_without_an_index_date_is_one_line(tmp_path):
    path = tmp_path / "p.json"
    patient = _patient("P7")
    del patient["index_date"]
    path.write_text(json.dumps([patient]))
    with pytest.raises(DataError, match=r"patient P7: no index_date: .* data\.index_date=none") as e:
        list(read_patients(path, DataConfig()))
    assert "\n" not in str(e.value)
    (read,) = read_patients(path, DataConfig(index_date="none"))
    assert len(read.events) == 4


def test_bad_dates_and_codes_stop_listed_in_file_order(tmp_path):
    """The first bad items of the file, dates and codes alike, whatever the kind of the first one."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_patient("P1"),
                                _patient("P2", diagnoses=[{"code": "E11.9", "date": "02/01/2020"}]),
                                _patient("P3", prescriptions=[{"code": "Z99ZZ99", "date": "2020-01-02"}]),
                                _patient("P4", procedures=[{"code": "99213", "date": "2020-02-30"}])]))
    with pytest.raises(DataError) as e:
        list(read_patients(path, DataConfig()))
    assert str(e.value) == (f"bad codes or dates (the first 3 in file order): "
                            f"{path}: patient P2: icd10cm code 'E11.9': date '02/01/2020' is not an ISO date "
                            f"(YYYY-MM-DD); {path}: patient P3: atc code 'Z99ZZ99'; "
                            f"{path}: patient P4: cpt code '99213': date '2020-02-30' is not an ISO date "
                            "(YYYY-MM-DD); fix them, or set data.on_bad_code=drop to drop and count them")


def test_dropping_bad_dates_counts_them_apart_from_bad_codes(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_patient("P1", diagnoses=[{"code": "E11.9", "date": "20200102"},
                                                          {"code": "E11-9", "date": "2020-01-02"},
                                                          {"code": "I10", "date": "2020-01-03"}])]))
    report = ReadReport()
    (patient,) = read_patients(path, DataConfig(on_bad_code="drop"), report)
    assert [e.code for e in patient.events if e.kind == "icd10cm"] == ["I10"]
    summary = report.summary()
    assert summary["dropped_dates"] == {"count": 1, "first": [f"{path}: patient P1: icd10cm code 'E11.9': date "
                                                              "'20200102' is not an ISO date (YYYY-MM-DD)"]}
    assert summary["dropped_codes"] == {"count": 1, "first": [f"{path}: patient P1: icd10cm code 'E11-9'"]}


def test_a_bad_index_date_stops_under_either_policy(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_patient("P1", index_date="2021/01/01")]))
    for policy in ("stop", "drop"):
        with pytest.raises(DataError, match=r"patient P1: index_date '2021/01/01' is not an ISO date"):
            list(read_patients(path, DataConfig(on_bad_code=policy)))


def test_the_split_is_by_patient_and_does_not_depend_on_file_order(tmp_path):
    patients = [_patient(f"P{i}", i % 2) for i in range(60)]
    outs = []
    for name, order in (("a", patients), ("b", patients[::-1])):
        source, out = tmp_path / f"{name}.json", tmp_path / name
        source.write_text(json.dumps(order))
        out.mkdir()
        convert(source, out, DataConfig(split=(0.6, 0.2, 0.2)), seed=3)
        outs.append({s: sorted(json.loads(x)["patient_id"] for x in (out / f"{s}.jsonl").read_text().splitlines())
                     for s in dataset.SPLITS})
    assert outs[0] == outs[1]
    assert sum(len(v) for v in outs[0].values()) == 60
    assert all(split_of(p, 3, (0.6, 0.2, 0.2)) == s for s, ids in outs[0].items() for p in ids)


def test_conversion_writes_the_documented_sequence_and_truncates_keeping_the_last_visits(tmp_path):
    source, out = tmp_path / "p.json", tmp_path / "out"
    source.write_text(json.dumps([_patient(f"P{i}") for i in range(40)]))
    out.mkdir()
    summary = convert(source, out, DataConfig(split=(0.5, 0.25, 0.25), max_length=5), seed=0)
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["tokens"][:5] == list(dataset.SPECIALS)
    assert "E11.65:icd10cm" in vocab["tokens"] and "A10BA02:atc" in vocab["tokens"]
    record = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    tokens = [vocab["tokens"][t] for t in record["tokens"]]
    # Full: [CLS] E11.65 A10BA02 [SEP] I10 99213 [SEP]; the last four after [CLS] are kept.
    assert tokens == ["[CLS]", "[SEP]", "I10:icd10cm", "99213:cpt", "[SEP]"]
    assert record["visits"] == [0, 1, 2, 2, 2] and record["types"] == [0, 0, 1, 3, 0] and record["ages"][-1] == 70
    assert summary["truncated_patients"] == 40


def test_visits_are_numbered_within_the_kept_window():
    """Twenty visits truncated to three positions after [CLS]: the kept visits are numbered from 1, in
    order, not 19 and 20 (nor clamped at the visit table's end, as long real histories were)."""
    from datetime import date

    from experiments.exmed_bert.patients import Event, Patient
    from experiments.exmed_bert.prepare import encode

    events = tuple(Event(date(2020, 1, 1 + day), "icd10cm", "I10") for day in range(20))
    patient = Patient("P1", 1950, "F", "CA", events, 0, None, 0)
    # Positions: [CLS], then I10 [SEP] of visit 1, ..., I10 [SEP] of visit 20.
    last, truncated = encode(patient, {"I10:icd10cm": 5}, {"F": 1}, {}, DataConfig(max_length=4))
    assert truncated and last["visits"] == [0, 1, 2, 2] and last["tokens"] == [2, 3, 5, 3]  # [SEP] of 19, visit 20
    first, _ = encode(patient, {"I10:icd10cm": 5}, {"F": 1}, {}, DataConfig(max_length=4, truncation="keep_first"))
    assert first["visits"] == [0, 1, 1, 2] and first["tokens"] == [2, 5, 3, 5]
