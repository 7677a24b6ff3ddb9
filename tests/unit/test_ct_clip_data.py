"""ct_clip data: the CT-RATE reader (v1 against v2, the spacing string, bad input), the synthetic
patients' scans and reconstructions, the selection patients, preprocessing against hand-computed
values, and the shards (round trip, check, resume of a killed `shards`)."""

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from experiments.ct_clip import ctrate
from experiments.ct_clip.config import CtClipConfig, SyntheticConfig
from experiments.ct_clip.data import ShardDataset
from experiments.ct_clip.prepare import check_shards, prepare, write_shards
from experiments.ct_clip.preprocess import crop_or_pad, preprocess, resample
from experiments.ct_clip.synthetic import scans, write_synthetic_ctrate
from experiments.ct_clip.train import selection_patients
from medrepro.config import load_config
from medrepro.errors import ConfigError, DataError

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "ct_clip" / "configs" / "smoke.yaml"
TINY = SyntheticConfig(train=3, valid=2, size_xy=24, slices=(8, 10), spacing_xy=(3.0,), spacing_z=(6.0,), scans=1,
                       reconstructions=1)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_synthetic_ctrate(tmp_path_factory.mktemp("ctrate"), TINY, seed=5)


def _config(tmp_path: Path, *extra: str) -> CtClipConfig:
    return load_config(CtClipConfig, SMOKE, [
        f"paths.prepared={tmp_path / 'raw'}", f"paths.shards={tmp_path / 'shards'}",
        f"encoders.cxr_bert.path={tmp_path / 'raw' / 'encoder'}", "data.synthetic.train=5", "data.synthetic.valid=3",
        "data.synthetic.size_xy=32", "data.synthetic.slices=[8,12]", "data.shape=[8,16,16]", "data.shard_samples=2",
        "data.workers=1", "data.synthetic.scans=1", "data.synthetic.reconstructions=1", *extra])


def _rewrite_csv(path: Path, edit) -> None:
    rows = list(csv.DictReader(path.open()))
    fields = list(rows[0])
    rows, fields = edit(rows, fields)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)


def test_spacing_string():
    assert ctrate.parse_spacing("[0.75, 0.75]", "x") == (0.75, 0.75)
    assert ctrate.parse_spacing(" [0.6640625, 0.6640625] ", "x") == (0.6640625, 0.6640625)
    for bad in ("0.75", "[0.75]", "[a, b]", "[0, 1]"):
        with pytest.raises(DataError, match="XYSpacing"):
            ctrate.parse_spacing(bad, "metadata.csv (v)")


def test_v1_is_rescaled_and_v2_is_not_and_both_give_the_same_hu(release):
    v1, v2 = ctrate.read_split(release, "train", "v1"), ctrate.read_split(release, "train", "v2")
    assert [r.name for r in v1] == [r.name for r in v2] == ["train_1_a_1.nii.gz", "train_2_a_1.nii.gz",
                                                             "train_3_a_1.nii.gz"]
    assert "train_fixed" in str(v2[0].path) and "train_fixed" not in str(v1[0].path)
    assert v1[0].spacing == (3.0, 3.0, 6.0) and v1[0].slope == 1.0 and v1[0].intercept == -1024.0
    for a, b in zip(v1, v2, strict=True):
        stored_v1, stored_v2 = ctrate.load_volume(a.path), ctrate.load_volume(b.path)
        hu_v1, rescaled_v1 = ctrate.hounsfield(stored_v1, a.slope, a.intercept, a.name)
        hu_v2, rescaled_v2 = ctrate.hounsfield(stored_v2, b.slope, b.intercept, b.name)
        assert rescaled_v1 and not rescaled_v2
        np.testing.assert_array_equal(hu_v1, hu_v2)
        # What upstream does to v2 (slope and intercept again): every voxel 1024 HU too low.
        np.testing.assert_array_equal(stored_v2 * b.slope + b.intercept, hu_v2 - 1024)


def test_synthetic_patients_have_scans_whose_reconstructions_share_labels_and_report(tmp_path):
    cfg = SyntheticConfig(train=40, valid=2, size_xy=24, slices=(8, 10), spacing_xy=(2.0, 3.0), spacing_z=(6.0,))
    groups = scans("train", cfg.train, cfg, np.random.default_rng(0))
    names = [n for g in groups for n in g]
    assert len(names) == len(set(names)) == 40
    patients = {ctrate.patient_of(n) for n in names}
    assert 1.3 < len(names) / len(patients) < 3.5, "several volumes per patient, as CT-RATE (about 2.3)"
    assert any(len(g) > 1 for g in groups) and any(n.endswith("_b_1.nii.gz") for n in names)
    records = {r.name: r for r in ctrate.read_split(write_synthetic_ctrate(tmp_path, cfg, seed=1), "train", "v2")}
    for group in scans("train", cfg.train, cfg, np.random.default_rng([1, 0])):
        first = records[group[0]]
        assert all(records[n].labels == first.labels and records[n].findings == first.findings for n in group)


def test_selection_patients_are_whole_patients_drawn_by_the_seed():
    keys = [f"train_{p}_a_{r}" for p in range(1, 11) for r in (1, 2)]
    held_out = selection_patients(keys, 3, seed=4)
    assert held_out == selection_patients(list(reversed(keys)), 3, seed=4) != selection_patients(keys, 3, seed=5)
    assert len(held_out) == 3 and set(held_out) < {ctrate.patient_of(k) for k in keys}
    for n in (0, 10):
        with pytest.raises(ConfigError, match=r"eval\.selection_patients"):
            selection_patients(keys, n, seed=4)


def test_hounsfield_refuses_a_volume_without_air():
    with pytest.raises(DataError, match="air density"):
        ctrate.hounsfield(np.full((4, 4, 4), 500.0, dtype=np.float32), 1.0, -1024.0, "v.nii.gz")


def test_resample_and_crop_pad_by_hand():
    # Upsampling 2 → 4 along one axis, align_corners=False: a, (3a+b)/4, (a+3b)/4, b.
    line = np.array([[[0.0]], [[400.0]]], dtype=np.float32)  # (z, y, x) = (2, 1, 1)
    np.testing.assert_allclose(resample(line, (2.0, 1.0, 1.0), (1.0, 1.0, 1.0))[:, 0, 0], [0, 100, 300, 400])
    cube = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    np.testing.assert_array_equal(crop_or_pad(cube, (1, 3, 5))[0],
                                  [[-1, 9, 10, 11, -1], [-1, 12, 13, 14, -1], [-1, 15, 16, 17, -1]])


def test_preprocess_small_volume_by_hand():
    # (x, y, z) = (2, 1, 3) at the target spacing: only clip, transpose to upstream's (z, x, y), scale and pad.
    hu = np.array([[[-2000.0, -500.0, 0.0]], [[250.0, 1000.0, 3000.0]]], dtype=np.float32)
    out = preprocess(hu, (0.75, 0.75, 1.5), (0.75, 0.75, 1.5), (4, 2, 1))
    assert out.dtype == np.float16 and out.shape == (4, 2, 1)
    np.testing.assert_array_equal(out[:, :, 0], np.array([[-1.0, 0.25], [-0.5, 1.0], [0.0, 1.0], [-1.0, -1.0]],
                                                         dtype=np.float16))


def test_sizes_are_floored_and_hu_clipped_before_resampling_as_upstream():
    # 5 voxels of 1.3 mm at 1.0 mm: upstream's int(6.5) = 6 (rounding would give 7).
    line = np.array([[[-3000.0, 0.0, 500.0, 0.0, 3000.0]]], dtype=np.float32)  # (x, y, z) = (1, 1, 5)
    out = preprocess(line, (1.0, 1.0, 1.3), (1.0, 1.0, 1.0), (6, 1, 1))
    clipped_first = resample(np.clip(line, -1000, 1000).reshape(5, 1, 1), (1.3, 1.0, 1.0), (1.0, 1.0, 1.0))
    assert clipped_first.shape == (6, 1, 1)
    np.testing.assert_array_equal(out, (clipped_first / 1000).astype(np.float16))
    assert out.min() >= -1.0 and out[0, 0, 0] == -1.0


def test_missing_column_missing_volume_bad_label(release, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(release, root)
    dirs = ctrate.csv_dir(root)
    labels = dirs["labels"] / "train_predicted_labels.csv"
    _rewrite_csv(labels, lambda rows, f: ([{**r, "Cardiomegaly": "2"} for r in rows], f))
    with pytest.raises(DataError, match=r"train_predicted_labels.csv \(train_1_a_1.nii.gz\): label 'Cardiomegaly'"):
        ctrate.read_split(root, "train", "v2")
    shutil.copy(ctrate.csv_dir(release)["labels"] / "train_predicted_labels.csv", labels)
    ctrate.volume_path(root, "v2", "train_2_a_1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"train_2_a_1.nii.gz is missing on disk"):
        ctrate.read_split(root, "train", "v2")
    metadata = dirs["metadata"] / "train_metadata.csv"
    _rewrite_csv(metadata, lambda rows, f: ([{k: v for k, v in r.items() if k != "XYSpacing"} for r in rows],
                                            [c for c in f if c != "XYSpacing"]))
    with pytest.raises(DataError, match=r"train_metadata.csv has no column XYSpacing"):
        ctrate.read_split(root, "train", "v2")


def test_truncated_and_four_dimensional_nifti(release, tmp_path):
    good = ctrate.volume_path(release, "v1", "train_1_a_1.nii.gz").read_bytes()
    truncated = tmp_path / "t.nii.gz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"t.nii.gz cannot be read .* truncated"):
        ctrate.load_volume(truncated)
    four = tmp_path / "f.nii.gz"
    four.write_bytes(gzip.compress(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)).to_bytes()))
    with pytest.raises(DataError, match=r"f.nii.gz has 4 dimensions"):
        ctrate.load_volume(four)


def test_shards_round_trip_check_and_resume(tmp_path):
    cfg = _config(tmp_path)
    prepare(cfg)
    out = write_shards(cfg)
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["samples"] == 5 and [s["samples"] for s in manifest["shards"]] == [2, 2, 1]
    assert manifest["shape"] == [8, 16, 16] and manifest["dtype"] == "float16" and manifest["release"] == "v2"
    assert check_shards(cfg) == 8

    # Item 1 is exactly the preprocessed source volume, its report and its labels.
    records = ctrate.read_split(tmp_path / "raw" / "ctrate", "train", "v2")
    volume, text, labels = ShardDataset(out / "train" / "manifest.json")[1]
    hu, _ = ctrate.hounsfield(ctrate.load_volume(records[1].path), 1.0, -1024.0, "")
    expected = preprocess(hu, records[1].spacing, cfg.data.spacing, cfg.data.shape)
    np.testing.assert_array_equal(volume[0].numpy(), expected.astype(np.float32))
    assert text == f"{records[1].findings} {records[1].impressions}"
    assert labels.tolist() == list(records[1].labels)

    # A killed run: the last shard missing. Only it is written again, byte for byte the same.
    shards = sorted((out / "train").glob("*.tar"))
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in shards}
    shards[-1].unlink()
    write_shards(cfg)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((out / "train").glob("*.tar"))}
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert after[shards[0].name][1] == before[shards[0].name][1], "a finished shard was written again"
    assert not (out / "train" / ".partial").exists()

    # A flipped byte inside a volume: the check names the shard. A label out of {0, 1}: it names the sample too.
    data = bytearray(shards[1].read_bytes())
    data[-3000] ^= 0xFF
    shards[1].write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-000001.tar: SHA-256 differs"):
        check_shards(cfg)
    data = bytearray(before[shards[1].name][0])
    header = data.index(b"train_4_a_1.labels.json")
    assert data[header + 512] == ord("[")
    data[header + 513] = ord("7")
    shards[1].write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-000001.tar, sample train_4_a_1: labels must be 18 values of 0 or 1"):
        check_shards(cfg)


def _write_bench_like_shards(out: Path, volumes: list[np.ndarray]) -> Path:
    import webdataset as wds

    from experiments.ct_clip.data import encode_sample
    from medrepro.shards import write_manifest

    out.mkdir()
    with wds.ShardWriter(str(out / "s-%06d.tar"), maxcount=2, verbose=0, mtime=0.0) as sink:
        for i, volume in enumerate(volumes):
            sink.write(encode_sample(f"v_{i}", volume, f"report {i}", (i % 2,) * len(ctrate.LABELS), {}))
    write_manifest(sorted(out.glob("*.tar")), out / "manifest.json", {"shape": list(volumes[0].shape)})
    return out / "manifest.json"


def test_items_stay_intact_when_the_read_buffer_is_reused(tmp_path):
    """Samples of different sizes share one read buffer: every item handed out keeps its own values
    after later reads, a subset and a pickled copy (a loader worker) read into buffers of their own,
    and a sample cut short by a truncated shard is refused rather than read from stale buffer bytes."""
    import pickle

    rng = np.random.default_rng(0)
    volumes = [rng.uniform(-1, 1, (4, 6, 6)).astype(np.float16) for _ in range(5)]
    dataset = ShardDataset(_write_bench_like_shards(tmp_path / "shards", volumes))
    items = [dataset[i] for i in (3, 0, 4, 1, 2)]
    for i, (volume, text, labels) in zip((3, 0, 4, 1, 2), items, strict=True):
        np.testing.assert_array_equal(volume[0].numpy(), volumes[i].astype(np.float32))
        assert text == f"report {i}" and labels.tolist() == [i % 2] * len(ctrate.LABELS)
    assert dataset._buffer is not None
    assert pickle.loads(pickle.dumps(dataset))._buffer is None
    assert dataset.subset(lambda key: key != "v_0")._buffer is None

    shard = sorted((tmp_path / "shards").glob("*.tar"))[-1]
    shard.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(DataError, match=r"s-000002.tar, sample v_4: truncated"):
        dataset.sample(4)
