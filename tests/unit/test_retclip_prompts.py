import re
from pathlib import Path

import pytest
import yaml

from experiments.retclip.odir import CLASSES, keyword_class
from experiments.retclip.prompts import DEFAULT_PATH, class_prompts, load_prompts, patient_prompts, report_text
from medrepro.errors import DataError


def test_default_prompts_load() -> None:
    prompts = load_prompts()
    assert prompts.version == 2
    assert set(prompts.names) == set(CLASSES)
    assert prompts.templates


def test_class_names_match_the_keywords_reports_contain() -> None:
    for label, names in load_prompts().names.items():
        assert all(keyword_class(name) == label for name in names)


def test_report_text() -> None:
    prompts = load_prompts()
    text = report_text(prompts, ("moderate non proliferative retinopathy", "laser spot"), ())
    assert text == "Left eye: moderate non proliferative retinopathy, laser spot. Right eye: no diagnosis."


def test_class_prompts_shape() -> None:
    prompts = load_prompts()
    for side in ("left", "right"):
        per_class = class_prompts(prompts, side)
        assert len(per_class) == len(CLASSES)
        for label, texts in zip(CLASSES, per_class, strict=True):
            assert len(texts) == len(prompts.names[label]) * len(prompts.templates)
    assert class_prompts(prompts, "right")[0][0] == "Right eye: normal fundus."


def test_patient_prompts_fill_both_eyes() -> None:
    prompts = load_prompts()
    per_class = patient_prompts(prompts)
    assert len(per_class) == len(CLASSES)
    assert per_class[CLASSES.index("C")] == ["Left eye: cataract. Right eye: cataract."]
    with pytest.raises(ValueError, match="side"):
        class_prompts(prompts, "both")


def _write(path: Path, changes: dict[str, object], drop: str | None = None) -> Path:
    raw = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    raw.update(changes)
    if drop:
        del raw[drop]
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("changes", "drop", "key"),
    [
        ({}, "joiner", "joiner"),
        ({"extra": 1}, None, "extra"),
        ({"version": "one"}, None, "version"),
        ({"report": "eyes: {left}"}, None, "report"),
        ({"templates": ["{side} eye: {label}."]}, None, "templates[0]"),
        ({"templates": []}, None, "templates"),
        ({"names": {label: ["x"] for label in CLASSES if label != "H"}}, None, "names.H"),
        ({"names": {**{label: ["x"] for label in CLASSES}, "Z": ["x"]}}, None, "names.Z"),
        ({"names": {**{label: ["x"] for label in CLASSES}, "N": []}}, None, "names.N"),
    ],
)
def test_bad_prompts_file_names_file_and_key(
    tmp_path: Path, changes: dict[str, object], drop: str | None, key: str
) -> None:
    path = _write(tmp_path / "prompts.yaml", changes, drop)
    with pytest.raises(DataError, match=re.escape(f"'{key}'")) as error:
        load_prompts(path)
    assert str(path) in str(error.value)


def test_unparsable_prompts_file(tmp_path: Path) -> None:
    path = tmp_path / "prompts.yaml"
    path.write_text("version: [1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"prompts\.yaml"):
        load_prompts(path)
