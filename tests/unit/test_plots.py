from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrepro.plots import confusion_matrix_png, per_class_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 0 and image.height > 0
    # atomic writes leave no temporary files behind
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_confusion_matrix_png(tmp_path):
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # the empty row must not divide by zero
    path = tmp_path / "out" / "confusion.png"
    confusion_matrix_png(cm, ["normal", "dr", "amd"], path, "test confusion")
    assert_png(path)


def test_confusion_matrix_png_rejects_mismatched_names(tmp_path):
    with pytest.raises(ValueError, match="class names"):
        confusion_matrix_png(np.eye(3), ["a", "b"], tmp_path / "cm.png", "t")


def test_per_class_png(tmp_path):
    per_class = {
        name: {"precision": p, "recall": r, "f1": f}
        for name, p, r, f in [("normal", 0.9, 0.8, 0.85), ("dr", 0.5, 0.7, 0.58), ("amd", 0.0, 0.0, 0.0)]
    }
    path = tmp_path / "per_class.png"
    per_class_png(per_class, path, "per-class scores")
    assert_png(path)


def test_per_class_png_rejects_inconsistent_metrics(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        per_class_png({"a": {"f1": 0.5}, "b": {"recall": 0.5}}, tmp_path / "p.png", "t")
    with pytest.raises(ValueError, match="empty"):
        per_class_png({}, tmp_path / "p.png", "t")
