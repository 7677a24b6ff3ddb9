"""exmed_bert data: code validation and hierarchy, the streaming import reader, conversion."""

import json

import pytest

from experiments.exmed_bert import codes, dataset
from experiments.exmed_bert.config import DataConfig
from experiments.exmed_bert.patients import iter_json, read_patients
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


def _patient(pid: str, endpoint: int = 0, **extra) -> dict:
    return {"patient_id": pid, "birth_year": 1950, "sex": "F", "state": "CA",
            "diagnoses": [{"code": "E11.65", "date": "2020-01-02"}, {"code": "I10", "date": "2020-03-01"}],
            "prescriptions": [{"code": "A10BA02", "date": "2020-01-02"}],
            "procedures": [{"code": "99213", "date": "2020-03-01"}], "endpoint": endpoint, "length_of_stay": 3.0,
            **extra}


def test_the_reader_streams_arrays_and_json_lines_across_chunk_boundaries(tmp_path):
    patients = [_patient(f"P{i}", i % 2) for i in range(30)]
    array, lines = tmp_path / "p.json", tmp_path / "p.jsonl"
    array.write_text(json.dumps(patients, indent=2))
    lines.write_text("".join(json.dumps(p) + "\n" for p in patients))
    for path in (array, lines):
        assert list(iter_json(path, chunk_size=17)) == patients


def test_a_bad_code_stops_naming_file_patient_and_code(tmp_path):
    bad = _patient("P2", diagnoses=[{"code": "E11.999", "date": "2020-01-02"}])
    worse = _patient("P3", prescriptions=[{"code": "N02BE0", "date": "2020-01-02"}])
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_patient("P1"), bad, worse]))
    with pytest.raises(DataError) as e:
        list(read_patients(path, "stop"))
    message = str(e.value)
    assert f"{path}: patient P2: icd10cm code 'E11.999'" in message and "patient P3: atc code 'N02BE0'" in message
    assert "on_bad_code=drop" in message and "\n" not in message


def test_dropping_bad_codes_counts_them_and_keeps_the_rest(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_patient("P1", diagnoses=[{"code": "E11.999", "date": "2020-01-02"},
                                                          {"code": "E11.9", "date": "2020-01-02"}])]))
    dropped = []
    (patient,) = read_patients(path, "drop", dropped=dropped)
    assert [b.code for b in dropped] == ["E11.999"]
    assert [e.code for e in patient.events if e.kind == "icd10cm"] == ["E11.9"]


def test_a_bad_date_is_one_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_patient("P1", diagnoses=[{"code": "E11.9", "date": "02/01/2020"}])]))
    with pytest.raises(DataError, match=r"patient P1: diagnoses code E11\.9: date '02/01/2020' is not an ISO date"):
        list(read_patients(path, "stop"))


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
