"""medrepro.shards: manifest round trip and every way a shard can go bad."""

import json

import pytest
import webdataset as wds

from medrepro.errors import ConfigError, DataError
from medrepro.shards import check_shard_count, check_shards, iter_samples, read_manifest, write_manifest


def _write(tmp_path, n_samples=5, per_shard=2):
    tmp_path.mkdir(parents=True, exist_ok=True)
    pattern = str(tmp_path / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for i in range(n_samples):
            sink.write({"__key__": f"s{i:03d}", "txt": f"report {i}", "json": {"i": i}})
    return sorted(tmp_path.glob("shard-*.tar"))


def _check(key, sample):
    if json.loads(sample["json"])["i"] != int(key[1:]):
        raise ValueError("json 'i' disagrees with the key")


def test_manifest_round_trip(tmp_path):
    shards = _write(tmp_path)
    manifest = write_manifest(shards, tmp_path / "manifest.json", {"shape": [2, 3]})
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 1]
    assert manifest["samples"] == 5 and manifest["shape"] == [2, 3]
    assert manifest["bytes"] == sum(p.stat().st_size for p in shards)
    assert read_manifest(tmp_path / "manifest.json") == manifest
    assert check_shards(tmp_path / "manifest.json", _check) == 5
    keys = [k for s in shards for k, _ in iter_samples(s)]
    assert keys == [f"s{i:03d}" for i in range(5)]
    assert next(iter_samples(shards[0]))[1]["txt"] == b"report 0"


def test_names_are_relative_so_the_directory_can_move(tmp_path):
    write_manifest(_write(tmp_path / "a"), tmp_path / "a" / "manifest.json", {})
    (tmp_path / "a").rename(tmp_path / "b")
    assert check_shards(tmp_path / "b" / "manifest.json") == 5


def test_truncated_shard_names_shard_and_last_good_sample(tmp_path):
    shards = _write(tmp_path)
    write_manifest(shards, tmp_path / "manifest.json", {})
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[:1600])  # into the second sample's members
    with pytest.raises(DataError, match=r"shard-000001\.tar is truncated or corrupt after sample s002"):
        check_shards(tmp_path / "manifest.json")


def test_flipped_byte_is_caught_by_the_digest(tmp_path):
    shards = _write(tmp_path)
    write_manifest(shards, tmp_path / "manifest.json", {})
    data = bytearray(shards[2].read_bytes())
    offset = data.index(b"report 4")
    data[offset + 7] ^= 1
    shards[2].write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard-000002\.tar: SHA-256 differs"):
        check_shards(tmp_path / "manifest.json")


def test_sample_check_failure_names_the_sample(tmp_path):
    shards = _write(tmp_path)
    write_manifest(shards, tmp_path / "manifest.json", {})

    def reject_s003(key, sample):
        if key == "s003":
            raise ValueError("bad volume")

    with pytest.raises(DataError, match=r"shard-000001\.tar, sample s003: bad volume"):
        check_shards(tmp_path / "manifest.json", reject_s003)


def test_missing_shard_and_count_mismatch(tmp_path):
    shards = _write(tmp_path)
    manifest = write_manifest(shards, tmp_path / "manifest.json", {})
    manifest["shards"][0]["samples"] = 3
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"shard-000000\.tar holds 2 samples, the manifest 3"):
        check_shards(tmp_path / "manifest.json")
    shards[0].unlink()
    with pytest.raises(DataError, match=r"shard-000000\.tar listed in .* is missing"):
        check_shards(tmp_path / "manifest.json")


def test_bad_manifests(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "none.json")
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(DataError, match="unreadable"):
        read_manifest(tmp_path / "m.json")
    (tmp_path / "m.json").write_text(json.dumps({"version": 1, "shards": [{"name": "x"}]}))
    with pytest.raises(DataError, match="must list objects"):
        read_manifest(tmp_path / "m.json")
    with pytest.raises(DataError, match="does not exist"):
        write_manifest([tmp_path / "absent.tar"], tmp_path / "m2.json", {})
    assert not (tmp_path / "m2.json").exists()


def test_shard_count():
    check_shard_count(8, 2, 4)
    check_shard_count(2, 2, 0)
    with pytest.raises(ConfigError, match=r"3 shards cannot feed 2 processes × 2 loader workers.*at least 4"):
        check_shard_count(3, 2, 2)
