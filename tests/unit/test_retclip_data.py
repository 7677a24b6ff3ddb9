"""RET-CLIP's LMDB tables (upstream layout), the datasets reading them, and patients.jsonl."""

import base64
import hashlib
import io
import json
import pickle
import shutil
from dataclasses import asdict
from pathlib import Path

import lmdb
import pytest
import torch
from open_clip.tokenizer import HFTokenizer
from PIL import Image
from torchvision import transforms

from experiments.retclip import data as retclip_data
from experiments.retclip import odir
from experiments.retclip.data import (
    EyeDataset,
    PairDataset,
    Record,
    build_lmdb,
    open_split,
    prepared_fingerprint,
    read_records,
    write_records,
)
from medrepro.errors import DataError
from medrepro.lmdb_store import DEFAULT_MAP_SIZE, DIGESTS_DB, record_digest
from medrepro.repro import sha256_tree
from medrepro.tiny import TinyBertConfig, build_tiny_bert

SIZE = 24
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
TRANSFORM = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])
FINGERPRINT = "a" * 64


def jpeg(path: Path, size: tuple[int, int], color) -> str:
    Image.new("RGB", size, color).save(path, format="JPEG", quality=95)
    return str(path)


def striped(path: Path) -> str:
    """60×20: red | green | blue thirds; its centre square is all green."""
    image = Image.new("RGB", (60, 20), RED)
    image.paste(GREEN, (20, 0, 40, 20))
    image.paste(BLUE, (40, 0, 60, 20))
    image.save(path, format="PNG")
    return str(path)


def record(id_, split, left, right, left_labels, right_labels, text) -> Record:
    return Record(id=id_, split=split, left_image=left, right_image=right, left_keywords=["kw"],
                  right_keywords=["kw"], left_labels=left_labels, right_labels=right_labels,
                  patient_labels=sorted(set(left_labels + right_labels)), text=text)


@pytest.fixture
def records(tmp_path) -> list[Record]:
    img = tmp_path / "images"
    img.mkdir()
    return [
        record(11, "train", jpeg(img / "11_l.jpg", (60, 40), RED), jpeg(img / "11_r.jpg", (40, 60), BLUE),
               ["N"], ["D", "G"], "left eye normal fundus, right eye diabetic retinopathy and glaucoma"),
        record(3, "train", striped(img / "3_l.png"), jpeg(img / "3_r.jpg", (50, 50), WHITE),
               [], ["C"], "right eye cataract"),
        record(27, "train", jpeg(img / "27_l.jpg", (80, 64), GREEN), jpeg(img / "27_r.jpg", (64, 80), RED),
               ["M"], ["M"], "both eyes pathological myopia"),
        record(4, "train", jpeg(img / "4_l.jpg", (30, 31), BLUE), jpeg(img / "4_r.jpg", (33, 30), GREEN),
               ["H"], [], "left eye hypertensive retinopathy"),
        record(5, "valid", jpeg(img / "5_l.jpg", (40, 40), RED), jpeg(img / "5_r.jpg", (40, 40), RED),
               ["A"], ["O"], "drusen and other findings"),
        record(6, "test", jpeg(img / "6_l.jpg", (40, 40), RED), jpeg(img / "6_r.jpg", (40, 40), RED),
               ["N"], ["N"], "normal fundus"),
    ]


@pytest.fixture
def lmdb_dir(tmp_path, records) -> Path:
    out = tmp_path / "lmdb"
    assert build_lmdb(records, out, SIZE, 90, FINGERPRINT, workers=1) == {"train": 4, "valid": 1, "test": 1}
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = ["left eye normal fundus", "right eye diabetic retinopathy and glaucoma", "right eye cataract",
              "both eyes pathological myopia", "left eye hypertensive retinopathy", "drusen and other findings"] * 4
    cfg = TinyBertConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=200)
    directory = build_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny", corpus, cfg)
    return HFTokenizer(str(directory), context_length=16)


def raw_items(path: Path) -> dict[bytes, bytes]:
    """The main database as an upstream reader sees it, less the name of the digests sub-database."""
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            items = dict(txn.cursor().iternext())
    finally:
        env.close()
    del items[DIGESTS_DB.encode()]
    return items


def raw_put(path: Path, key: bytes, value: bytes, digest: bool = False) -> None:
    """Overwrite a record; with `digest`, its digest too, as a writer that skips validation would."""
    env = lmdb.open(str(path), map_size=DEFAULT_MAP_SIZE, subdir=True, max_dbs=1)
    try:
        digests = env.open_db(DIGESTS_DB.encode())
        with env.begin(write=True) as txn:
            assert txn.get(key) is not None
            txn.put(key, value)
            if digest:
                txn.put(key, record_digest(key, value), db=digests)
    finally:
        env.close()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.urlsafe_b64decode(b64)))


def dominant(tensor: torch.Tensor) -> int:
    """Index of the strongest colour channel of a (3, H, W) image tensor."""
    return int(tensor.mean(dim=(1, 2)).argmax())


# ------------------------------------------------------------------------------------ LMDB layout


def test_build_writes_the_three_tables_per_split(lmdb_dir):
    for split in ("train", "valid", "test"):
        assert sorted(p.name for p in (lmdb_dir / split).iterdir()) == ["imgs", "labels", "meta", "pairs"]
    assert sorted(p.name for p in lmdb_dir.iterdir()) == ["test", "train", "valid"]


def test_imgs_table_upstream_layout(lmdb_dir, records):
    items = raw_items(lmdb_dir / "train" / "imgs")
    assert items.pop(b"num_images") == b"4"
    assert set(items) == {b"11", b"3", b"27", b"4"}
    for value in items.values():
        pair = pickle.loads(value)
        assert type(pair) is tuple and len(pair) == 2 and all(type(v) is str for v in pair)
        for b64 in pair:
            assert "+" not in b64 and "/" not in b64  # URL-safe alphabet
            image = decode(b64)
            assert image.format == "JPEG" and image.size == (SIZE, SIZE) and image.mode == "RGB"


def test_stored_eyes_are_centre_crops_in_left_right_order(lmdb_dir):
    items = raw_items(lmdb_dir / "train" / "imgs")
    left, right = pickle.loads(items[b"11"])
    assert dominant(transforms.functional.to_tensor(decode(left))) == 0   # red left eye
    assert dominant(transforms.functional.to_tensor(decode(right))) == 2  # blue right eye
    striped_left, _ = pickle.loads(items[b"3"])
    centre = transforms.functional.to_tensor(decode(striped_left))
    assert dominant(centre) == 1 and centre[1].mean() > 0.8 and centre[0].mean() < 0.2  # only the green third


def test_pairs_table_upstream_layout(lmdb_dir, records):
    items = raw_items(lmdb_dir / "train" / "pairs")
    assert items.pop(b"num_samples") == b"4"
    train = [r for r in records if r.split == "train"]
    assert {k: pickle.loads(v) for k, v in items.items()} == {
        str(i).encode(): (r.id, i, r.text) for i, r in enumerate(train)}
    patient, text_id, text = pickle.loads(items[b"0"])
    assert type(patient) is int and type(text_id) is int and type(text) is str


def test_labels_table(lmdb_dir):
    items = raw_items(lmdb_dir / "train" / "labels")
    assert items.pop(b"num_labels") == b"4"
    assert pickle.loads(items[b"11"]) == {"left": ["N"], "right": ["D", "G"]}
    assert pickle.loads(items[b"3"]) == {"left": [], "right": ["C"]}


def test_build_rejects_unknown_label(tmp_path, records):
    bad = [*records[:1], record(9, "train", records[0].left_image, records[0].right_image, ["X"], [], "t")]
    with pytest.raises(DataError, match="'9'"):
        build_lmdb(bad, tmp_path / "bad", SIZE, 90, FINGERPRINT, workers=1)


def test_build_unreadable_image_names_it(tmp_path, records):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    bad = [record(9, "train", str(broken), records[0].right_image, ["N"], ["N"], "t")]
    with pytest.raises(DataError, match=r"broken\.jpg"):
        build_lmdb(bad, tmp_path / "bad", SIZE, 90, FINGERPRINT, workers=1)


# --------------------------------------------------------------------------------------- datasets


def test_pair_dataset(lmdb_dir, records, tokenizer):
    data = PairDataset(lmdb_dir / "train", TRANSFORM, tokenizer)
    assert len(data) == 4
    train = [r for r in records if r.split == "train"]
    for index, rec in enumerate(train):
        left, right, tokens = data[index]
        assert left.shape == right.shape == (3, 32, 32) and left.dtype == torch.float32
        assert tokens.shape == (16,) and tokens.dtype == torch.long
        assert torch.equal(tokens, tokenizer([rec.text])[0])
    left, right, _ = data[0]  # patient 11: red left, blue right
    assert dominant(left) == 0 and dominant(right) == 2


def test_pair_dataset_with_open_clip_transform(lmdb_dir, tokenizer):
    import open_clip

    data = PairDataset(lmdb_dir / "valid", open_clip.image_transform(32, is_train=False), tokenizer)
    left, right, _ = data[0]
    assert left.shape == right.shape == (3, 32, 32)


@pytest.mark.parametrize(("side", "expected"), [
    ("left", [(4, "H"), (11, "N"), (27, "M")]),   # patient 3's left eye has no label
    ("right", [(3, "C"), (27, "M")]),              # 11 has two labels, 4 none
])
def test_eye_dataset_single_label_eyes_of_one_side(lmdb_dir, side, expected):
    data = EyeDataset(lmdb_dir / "train", TRANSFORM, side)
    assert [(e.patient, e.side, e.label) for e in data.eyes] == [
        (p, side, odir.CLASSES.index(label)) for p, label in expected]
    assert len(data) == len(expected)
    image, label = data[0]
    assert image.shape == (3, 32, 32) and label == odir.CLASSES.index(expected[0][1])


def test_eye_dataset_returns_the_requested_side(lmdb_dir):
    left = EyeDataset(lmdb_dir / "train", TRANSFORM, "left")
    right = EyeDataset(lmdb_dir / "train", TRANSFORM, "right")
    assert dominant(left[0][0]) == 2    # patient 4: blue left eye
    assert dominant(right[1][0]) == 0   # patient 27: red right eye


# ------------------------------------------------------------------------------------- corruption


def test_corrupt_image_record_names_key_and_path(lmdb_dir, tokenizer):
    imgs = lmdb_dir / "train" / "imgs"
    raw_put(imgs, b"27", b"\x00garbage bytes, not a pickle\xff")
    data = PairDataset(lmdb_dir / "train", TRANSFORM, tokenizer)
    data[0]  # other records still read
    with pytest.raises(DataError) as info:
        data[2]  # pair 2 → patient 27
    assert "'27'" in str(info.value) and str(imgs) in str(info.value)


def test_corrupt_pair_record_names_key_and_path(lmdb_dir, tokenizer):
    pairs = lmdb_dir / "train" / "pairs"
    raw_put(pairs, b"1", b"\x80\x05garbage")
    data = PairDataset(lmdb_dir / "train", TRANSFORM, tokenizer)
    with pytest.raises(DataError) as info:
        data[1]
    assert "'1'" in str(info.value) and str(pairs) in str(info.value)


def test_corrupt_jpeg_inside_valid_record(lmdb_dir, tokenizer):
    imgs = lmdb_dir / "train" / "imgs"
    items = raw_items(imgs)
    left, _ = pickle.loads(items[b"3"])
    bad_right = base64.urlsafe_b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 40).decode("ascii")
    raw_put(imgs, b"3", pickle.dumps((left, bad_right)), digest=True)
    data = PairDataset(lmdb_dir / "train", TRANSFORM, tokenizer)
    with pytest.raises(DataError) as info:
        data[1]  # pair 1 → patient 3
    assert str(imgs) in str(info.value) and "record 3" in str(info.value)


def test_every_split_records_the_fingerprint(lmdb_dir):
    for split in ("train", "valid", "test"):
        items = raw_items(lmdb_dir / split / "meta")
        assert items.pop(b"num_meta") == b"1"
        assert pickle.loads(items[b"patients_sha256"]) == FINGERPRINT


def test_prepared_fingerprint_is_the_sha256_of_patients(tmp_path, records):
    path = tmp_path / "patients.jsonl"
    write_records(path, records)
    assert prepared_fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_splits_from_different_prepare_runs_are_refused(tmp_path, records, lmdb_dir, tokenizer):
    other = tmp_path / "other"
    build_lmdb(records, other, SIZE, 90, "b" * 64, workers=1)
    shutil.rmtree(lmdb_dir / "valid")
    shutil.copytree(other / "valid", lmdb_dir / "valid")
    for open_it in (lambda: open_split(lmdb_dir / "test"),
                    lambda: PairDataset(lmdb_dir / "train", TRANSFORM, tokenizer),
                    lambda: EyeDataset(lmdb_dir / "test", TRANSFORM, "left")):
        with pytest.raises(DataError) as info:
            open_it()
        message = str(info.value)
        assert "different prepare runs" in message and str(lmdb_dir) in message and "build-lmdb" in message
        assert "valid bbbbbbbbbbbb" in message and "train aaaaaaaaaaaa" in message and "\n" not in message


def test_interrupted_build_leaves_the_previous_lmdb_untouched(tmp_path, records, lmdb_dir, monkeypatch):
    before = sha256_tree(lmdb_dir)
    written = []

    def write_then_die(path, *args, **kwargs):
        if path.parent.name == "valid":  # the train split is complete: the process dies here
            raise KeyboardInterrupt
        written.append(path)
        return write_table(path, *args, **kwargs)

    write_table = retclip_data.write_table
    monkeypatch.setattr(retclip_data, "write_table", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_lmdb(records, lmdb_dir, SIZE, 90, "b" * 64, workers=1)
    assert [p.name for p in written] == ["imgs", "pairs", "labels", "meta"]
    assert sha256_tree(lmdb_dir) == before
    assert [p.name for p in lmdb_dir.parent.iterdir() if p.name.startswith(".")] == []
    open_split(lmdb_dir / "train")  # still one consistent prepare run


# ------------------------------------------------------------------------------------ patients.jsonl


def test_records_round_trip(tmp_path, records):
    path = tmp_path / "patients.jsonl"
    write_records(path, records)
    assert read_records(path) == records
    assert len(path.read_text().splitlines()) == len(records)


@pytest.mark.parametrize("bad", ["{not json", '{"id": 1}', "[1, 2]", '"text"'])
def test_read_records_malformed_line_names_file_and_line(tmp_path, records, bad):
    path = tmp_path / "patients.jsonl"
    lines = [json.dumps(asdict(r)) for r in records[:2]]
    path.write_text("\n".join([*lines, bad, lines[0]]) + "\n")
    with pytest.raises(DataError) as info:
        read_records(path)
    assert f"{path}:3" in str(info.value)


def test_read_records_missing_file(tmp_path):
    with pytest.raises(DataError, match="prepare"):
        read_records(tmp_path / "patients.jsonl")
