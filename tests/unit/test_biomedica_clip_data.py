"""biomedica_clip data: synthetic shards in BIOMEDICA's layout, the archive's filters in `verify`, sources
joined with `::`, and bad shards refused with one line naming the shard and the key."""

import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from experiments.biomedica_clip import archive, synthetic
from experiments.biomedica_clip.config import BiomedicaClipConfig, DataConfig, SyntheticConfig
from medrepro import shards
from medrepro.errors import ConfigError, DataError

SMALL = SyntheticConfig(train_shards=2, samples_per_shard=12, heldout_samples=16, image_size=32)


def write(directory: Path, split: str = "train", count: int = 24, per_shard: int = 12) -> dict[str, int]:
    return synthetic.write_shards(directory, synthetic.samples(0, split, count, SMALL), per_shard)


def test_shards_hold_biomedica_fields_and_are_byte_reproducible(tmp_path):
    sizes = write(tmp_path / "a")
    write(tmp_path / "b")
    assert sizes == {"000000.tar": 12, "000001.tar": 12}
    assert json.loads((tmp_path / "a" / "sizes.json").read_text()) == sizes
    for name in sizes:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    samples = list(wds.WebDataset(str(tmp_path / "a" / "000000.tar"), shardshuffle=False, empty_check=False))
    assert {"__key__", "jpg", "txt", "json"} <= set(samples[0])
    meta = json.loads(samples[0]["json"])
    assert {"pmcid", "article_title", "journal", "license", "panel_type", "primary_label",
            "secondary_label"} <= set(meta)
    assert len({s["__key__"] for s in samples}) == len(samples)


def test_the_caption_names_the_drawn_colour_and_place_and_heldout_classes_stay_out_of_training():
    train = list(synthetic.samples(0, "train", 200, SMALL))
    assert not {s.meta["primary_label"] for s in train} & set(synthetic.HELDOUT_CLASSES)
    for s in train[:40]:
        colour, _, region = s.meta["primary_label"].partition(" lesion in the ")
        assert f"{colour} lesion in the {region}" in s.txt
        image = Image.open(io.BytesIO(s.jpg)).convert("RGB")
        # The lesion's quadrant holds the colour: its mean is pulled towards it, the opposite one is not.
        half = SMALL.image_size // 2
        top = 0 if region.startswith("upper") else half
        left = 0 if region.endswith("left") else half
        quadrant = image.crop((left, top, left + half, top + half))
        opposite = image.crop((half - left, half - top, 2 * half - left, 2 * half - top))
        channel = max(range(3), key=synthetic.COLOURS[colour].__getitem__)
        assert channel_mean(quadrant, channel) > channel_mean(opposite, channel) + 10


def channel_mean(image: Image.Image, channel: int) -> float:
    pixels = list(image.getdata())
    return sum(p[channel] for p in pixels) / len(pixels)


def test_csv_twin_lists_every_sample_with_a_relative_path(tmp_path):
    count = synthetic.write_csv_twin(tmp_path, synthetic.samples(0, "train", 10, SMALL))
    rows = (tmp_path / "train.csv").read_text().splitlines()
    assert count == 10 and rows[0] == "filepath\tcaption" and len(rows) == 11
    path, caption = rows[1].split("\t")
    assert not Path(path).is_absolute() and (tmp_path / path).is_file() and caption


def test_sources_joined_with_colons_expand_with_their_factors(tmp_path):
    sources = archive.parse_sources(f"{tmp_path}/a/{{000..002}}.tar::{tmp_path}/b/000.tar", "1::4")
    assert [len(s.paths) for s in sources] == [3, 1] and [s.factor for s in sources] == [1.0, 4.0]
    with pytest.raises(ConfigError, match="one positive factor per source"):
        archive.parse_sources(f"{tmp_path}/a/{{000..002}}.tar::{tmp_path}/b/000.tar", "1")
    with pytest.raises(ConfigError, match="empty"):
        archive.parse_sources(f"{tmp_path}/a.tar::")


def verified(tmp_path: Path, **data) -> dict:
    return archive.verify_source(archive.parse_sources(f"{tmp_path}/s/{{000000..000001}}.tar")[0],
                                 DataConfig(**data))


def test_verify_writes_sizes_and_manifest_where_missing_then_checks_against_them(tmp_path):
    write(tmp_path / "s")
    (tmp_path / "s" / "sizes.json").unlink()
    report = verified(tmp_path)
    assert report["samples"] == 24 and set(report["written"]) == {"manifest.json", "sizes.json"}
    assert verified(tmp_path)["written"] == []
    manifest = shards.read_manifest(tmp_path / "s" / "manifest.json")
    assert [e["samples"] for e in manifest["shards"]] == [12, 12]


def rewrite_sample(shard: Path, index: int, **fields: bytes | None) -> str:
    """Rewrite `shard` with sample `index`'s fields replaced (None drops a field); returns its key."""
    samples = list(shards.iter_samples(shard))
    key, sample = samples[index]
    for name, value in fields.items():
        if value is None:
            sample.pop(name, None)
        else:
            sample[name] = value
    with tarfile.open(shard, "w") as tar:
        for k, s in samples:
            for ext, data in s.items():
                info = tarfile.TarInfo(f"{k}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return key


def jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 90, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(("fields", "message"), [
    ({"txt": None}, "no caption"),
    ({"txt": b"  No caption found "}, "archive filters out"),
    ({"txt": b""}, "archive filters out"),
    ({"jpg": b"\xff\xd8\xff\xe0 not a jpeg"}, "does not decode"),
    ({"jpg": jpeg(20)}, "20x20 px"),
    ({"jpg": None}, "no image"),
])
def test_verify_names_the_shard_and_key_of_a_bad_sample(tmp_path, fields, message):
    write(tmp_path / "s")
    (tmp_path / "s" / "sizes.json").unlink()
    key = rewrite_sample(tmp_path / "s" / "000001.tar", 5, **fields)
    with pytest.raises(DataError, match=message) as info:
        verified(tmp_path)
    assert "000001.tar" in str(info.value) and key in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "s" / "manifest.json").exists() and not (tmp_path / "s" / "sizes.json").exists()


def test_verify_refuses_a_truncated_shard_and_a_changed_one(tmp_path):
    write(tmp_path / "s")
    verified(tmp_path)
    shard = tmp_path / "s" / "000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"000000\.tar"):
        verified(tmp_path)
    shard.write_bytes(data[:-1] + b"\x01")
    with pytest.raises(DataError, match=r"000000\.tar"):
        verified(tmp_path)


def test_verify_refuses_sizes_that_disagree_with_the_shards(tmp_path):
    write(tmp_path / "s")
    (tmp_path / "s" / "sizes.json").write_text(json.dumps({"000000.tar": 12, "000001.tar": 99}))
    with pytest.raises(DataError, match=r"sizes\.json says 99 samples for 000001\.tar"):
        verified(tmp_path)


def test_synthetic_sources_need_prepared_shards(tmp_path):
    cfg = BiomedicaClipConfig()
    cfg.paths.prepared = str(tmp_path / "missing")
    with pytest.raises(DataError, match="run `medrepro biomedica_clip prepare`"):
        archive.train_sources(cfg)
