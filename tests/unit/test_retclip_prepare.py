"""prepare stops when a split would be empty: nothing to train on, select by or report."""

import pytest

from experiments.retclip.config import RetClipConfig
from experiments.retclip.prepare import prepare
from medrepro.errors import DataError


def test_empty_split_stops_prepare_before_writing(tmp_path):
    cfg = RetClipConfig()
    cfg.paths.prepared = str(tmp_path / "prepared")
    cfg.data.synthetic_patients = 3
    cfg.data.split = (1.0, 0.0, 0.0)
    with pytest.raises(DataError, match=r"the valid split of 3 patients is empty \(data.split"):
        prepare(cfg)
    assert not (tmp_path / "prepared" / "patients.jsonl").exists()
