"""biomedica_clip data: synthetic shards in BIOMEDICA's layout (the archive's field names, list labels,
figure-name keys), the archive's filters and metadata in `audit`, held-out shards and articles kept out
of training, sources joined with `::`, and bad shards refused with one line naming the shard and the key.

The layout the fixtures are checked against is the BIOMEDICA ETL's: minwoosun/biomedica-etl at commit
b53ded3, scripts/06_serilaize_to_webdataset_parallel.py (`generate_webdataset`, `save_example_to_tar`):
each sample's json holds image_* and article_* fields (`image_primary_label` and
`image_secondary_label` lists of strings, `article_accession_id` the PMC id), its key is the figure's
file name `<batch>-<pmcid>-<position>-<id>`; `metadata.FIELDS` lists them in the ETL's order."""

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from experiments.biomedica_clip import archive, metadata, synthetic
from experiments.biomedica_clip.config import BiomedicaClipConfig, DataConfig, SyntheticConfig
from medrepro import config, shards
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
    assert len({s["__key__"] for s in samples}) == len(samples)
    for sample in samples:
        meta = json.loads(sample["json"])
        assert tuple(meta) == metadata.FIELDS  # every field the archive writes, under its names, in its order
        assert not set(meta) & set(metadata.OLD_NAMES)
        for name in ("image_primary_label", "image_secondary_label", "article_keywords", "article_mesh_terms"):
            assert isinstance(meta[name], list) and all(isinstance(v, str) for v in meta[name])
        assert len(meta["image_primary_label"]) == 1 and meta["image_size"] == [32, 32]
        # The key is the figure's file name, <batch>-<PMC id>-<position>-<image id>, as the ETL splits it.
        batch, pmcid, position, *image_id = sample["__key__"].split("-")
        assert re.fullmatch(r"filelist_(commercial|noncommercial)_batch_\d+_0", batch)
        assert pmcid == meta["article_accession_id"] and re.fullmatch(r"PMC\d+", pmcid)
        assert "-".join(image_id) == meta["image_cluster_id"] and position.isdigit()
        assert meta["image_file_name"] == f"{meta['image_cluster_id']}.jpg"


def test_the_caption_names_the_drawn_colour_and_place_and_heldout_classes_stay_out_of_training():
    train = list(synthetic.samples(0, "train", 200, SMALL))
    assert not {s.meta["image_primary_label"][0] for s in train} & set(synthetic.HELDOUT_CLASSES)
    for s in train[:40]:
        colour, _, region = s.meta["image_primary_label"][0].partition(" lesion in the ")
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


def audited(tmp_path: Path, contents: archive.Contents | None = None, **data) -> dict:
    return archive.audit_source(archive.parse_sources(f"{tmp_path}/s/{{000000..000001}}.tar")[0],
                                 DataConfig(**data), contents or archive.Contents())


def test_audit_writes_sizes_and_manifest_where_missing_then_checks_against_them(tmp_path):
    write(tmp_path / "s")
    (tmp_path / "s" / "sizes.json").unlink()
    report = audited(tmp_path)
    assert report["samples"] == 24 and set(report["written"]) == {"manifest.json", "sizes.json"}
    assert audited(tmp_path)["written"] == []
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
    ({"json": None}, "no json metadata"),
    ({"json": b"{not json"}, "does not parse"),
])
def test_audit_names_the_shard_and_key_of_a_bad_sample(tmp_path, fields, message):
    write(tmp_path / "s")
    (tmp_path / "s" / "sizes.json").unlink()
    key = rewrite_sample(tmp_path / "s" / "000001.tar", 5, **fields)
    with pytest.raises(DataError, match=message) as info:
        audited(tmp_path)
    assert "000001.tar" in str(info.value) and key in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "s" / "manifest.json").exists() and not (tmp_path / "s" / "sizes.json").exists()


def test_audit_refuses_a_truncated_shard_and_a_changed_one(tmp_path):
    write(tmp_path / "s")
    audited(tmp_path)
    shard = tmp_path / "s" / "000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"000000\.tar"):
        audited(tmp_path)
    shard.write_bytes(data[:-1] + b"\x01")
    with pytest.raises(DataError, match=r"000000\.tar"):
        audited(tmp_path)


def test_audit_refuses_sizes_that_disagree_with_the_shards(tmp_path):
    write(tmp_path / "s")
    (tmp_path / "s" / "sizes.json").write_text(json.dumps({"000000.tar": 12, "000001.tar": 99}))
    with pytest.raises(DataError, match=r"sizes\.json says 99 samples for 000001\.tar"):
        audited(tmp_path)


def test_synthetic_sources_need_prepared_shards(tmp_path):
    cfg = BiomedicaClipConfig()
    cfg.paths.prepared = str(tmp_path / "missing")
    with pytest.raises(DataError, match="run `medrepro biomedica_clip prepare`"):
        archive.train_sources(cfg)


def meta_of(shard: Path, index: int) -> dict:
    return json.loads(list(shards.iter_samples(shard))[index][1]["json"])


def old_name(old: str, new: str):
    return lambda meta: meta.update({old: meta.pop(new)})


@pytest.mark.parametrize(("change", "message"), [
    (lambda meta: meta.pop("article_accession_id"), "its json has no `article_accession_id`"),
    (lambda meta: meta.update(article_accession_id=""), "not a PMC id; the article is never guessed from the key"),
    (old_name("pmcid", "article_accession_id"), "has `pmcid` but no `article_accession_id`, the field the BIOMEDICA"),
    (old_name("primary_label", "image_primary_label"), "has `primary_label` but no `image_primary_label`"),
    (lambda meta: meta.update(image_primary_label=[3]), "not a string or a list of strings"),
])
def test_audit_refuses_metadata_without_the_archive_fields_naming_shard_and_key(tmp_path, change, message):
    write(tmp_path / "s")
    shard = tmp_path / "s" / "000001.tar"
    meta = meta_of(shard, 5)
    change(meta)
    key = rewrite_sample(shard, 5, json=json.dumps(meta).encode())
    with pytest.raises(DataError, match=re.escape(message)) as info:
        audited(tmp_path)
    assert "000001.tar" in str(info.value) and key in str(info.value) and "\n" not in str(info.value)


def test_a_list_label_gives_a_class_only_with_exactly_one_entry(tmp_path):
    field = "image_primary_label"
    assert metadata.single_label({field: ["Microscopy"]}, field) == "Microscopy"
    assert metadata.single_label({field: ["Microscopy", "Plots and Charts"]}, field) == ""
    assert metadata.single_label({field: []}, field) == ""
    assert metadata.single_label({"image_panel_type": "single"}, "image_panel_type") == "single"
    write(tmp_path / "s")
    shard = tmp_path / "s" / "000000.tar"
    meta = meta_of(shard, 0)
    meta[field] = ["Microscopy", "Plots and Charts"]  # a multi-panel figure
    rewrite_sample(shard, 0, json=json.dumps(meta).encode())
    contents = archive.Contents()
    audited(tmp_path, contents)
    assert sum(contents.labels.values()) == 23 and "Microscopy" not in contents.labels
    assert len(contents.articles) == 6  # 24 figures, 4 per article


def test_the_old_label_field_name_is_refused_in_the_config():
    with pytest.raises(ConfigError, match="use 'image_primary_label'"):
        config.from_dict(BiomedicaClipConfig, {"data": {"label_field": "primary_label"}}, "smoke.yaml")


def shard_config(tmp_path: Path, heldout: str) -> BiomedicaClipConfig:
    """Two training shards of 12 samples (6 articles) and a held-out shard of 8 (2 other articles)."""
    write(tmp_path / "train")
    synthetic.write_shards(tmp_path / "heldout", synthetic.samples(0, "heldout", 8, SMALL), 8)
    cfg = BiomedicaClipConfig()
    cfg.data.source = "shards"
    cfg.data.train = f"{tmp_path}/train/{{000000..000001}}.tar"
    cfg.data.heldout = heldout
    cfg.paths.audited = str(tmp_path / "audited")
    return cfg


def test_audit_records_disjoint_sides_and_label_counts_that_train_and_evaluate_rely_on(tmp_path):
    cfg = shard_config(tmp_path, f"{tmp_path}/heldout/000000.tar")
    with pytest.raises(DataError, match="run `medrepro biomedica_clip audit` first"):
        archive.audit_report(cfg)
    report = archive.audit(cfg)
    assert report["articles"] == {"train": 6, "heldout": 2, "shared": 0}
    counts = report["train_labels"]["counts"]
    assert sum(counts.values()) == 24 and set(counts) <= set(synthetic.TRAIN_CLASSES) and list(counts) == sorted(counts)
    assert archive.audit_report(cfg) == report
    cfg.data.label_field = "image_secondary_label"
    with pytest.raises(DataError, match="audit` again"):
        archive.audit_report(cfg)


def test_a_training_shard_given_as_held_out_is_refused_before_anything_is_read(tmp_path):
    cfg = shard_config(tmp_path, f"{tmp_path}/train/../train/000001.tar")
    for stage in (archive.audit, archive.audit_report):
        with pytest.raises(ConfigError, match=r"held-out shard .*000001\.tar is also a training shard") as info:
            stage(cfg)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "audited").exists() and not (tmp_path / "train" / "manifest.json").exists()


def test_held_out_articles_with_figures_in_training_are_refused(tmp_path):
    cfg = shard_config(tmp_path, f"{tmp_path}/heldout/000000.tar")
    train_key, train_sample = next(shards.iter_samples(tmp_path / "train" / "000001.tar"))
    article = json.loads(train_sample["json"])["article_accession_id"]
    held = tmp_path / "heldout" / "000000.tar"
    meta = meta_of(held, 3)
    meta["article_accession_id"] = article
    key = rewrite_sample(held, 3, json=json.dumps(meta).encode())
    with pytest.raises(DataError, match=f"1 held-out article\\(s\\) also have figures in the training shards, "
                                        f"e.g. {article}") as info:
        archive.audit(cfg)
    assert key in str(info.value) and train_key in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "audited").exists()
    # The same articles under other file names (a copied shard) are refused too.
    shutil.copy(tmp_path / "train" / "000001.tar", held)
    (tmp_path / "heldout" / "sizes.json").unlink()
    (tmp_path / "heldout" / "manifest.json").unlink()
    with pytest.raises(DataError, match="3 held-out article"):
        archive.audit(cfg)


def test_evaluate_groups_by_article_and_names_a_held_out_sample_without_one(tmp_path):
    from experiments.biomedica_clip.evaluate import read_heldout

    cfg = shard_config(tmp_path, f"{tmp_path}/heldout/000000.tar")
    data = read_heldout(cfg)
    assert data.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and all(data.labels)
    held = tmp_path / "heldout" / "000000.tar"
    meta = meta_of(held, 6)
    del meta["article_accession_id"]
    key = rewrite_sample(held, 6, json=json.dumps(meta).encode())
    with pytest.raises(DataError, match="its json has no `article_accession_id`") as info:
        read_heldout(cfg)
    assert "000000.tar" in str(info.value) and key in str(info.value) and "\n" not in str(info.value)
