"""`prepare`, `shards` and `check-shards`: CT-RATE (or its synthetic twin) → checked record lists → shards.

`prepare` reads the release's CSVs and checks every volume named there is on disk (the synthetic
profile first writes the synthetic release and builds the tiny text encoder). `shards` preprocesses
the volumes in parallel processes, each holding one volume at a time, into WebDataset shards written
by webdataset's ShardWriter; a shard is renamed into place only once complete, so a killed `shards`
run continues at the first missing shard. `check-shards` re-reads the shards against their manifests.
"""

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from experiments.ct_clip import ctrate
from experiments.ct_clip.config import CtClipConfig
from experiments.ct_clip.data import decode_sample, encode_sample
from experiments.ct_clip.preprocess import HU_RANGE, PAD_VALUE, preprocess
from experiments.ct_clip.prompts import prompts
from experiments.ct_clip.synthetic import write_synthetic_ctrate
from medrepro import atomic, shards
from medrepro.errors import ConfigError, DataError
from medrepro.tiny import build_tiny_bert

RECORDS = "records.json"


def report_text(record: dict, fields: tuple[str, ...]) -> str:
    """The report text of a record: the chosen fields, joined with a space, in the given order."""
    values = {"Findings_EN": record["findings"], "Impressions_EN": record["impressions"]}
    return " ".join(values[f] for f in fields if values[f])


def prepare(cfg: CtClipConfig, args: argparse.Namespace | None = None) -> Path:
    out = Path(cfg.paths.prepared)
    if cfg.data.source == "synthetic":
        root = write_synthetic_ctrate(out / "ctrate", cfg.data.synthetic, cfg.seed)
    else:
        if not cfg.data.ctrate_root:
            raise ConfigError("data.ctrate_root is empty: point it at the CT-RATE directory "
                              "(data.ctrate_root=/data/CT-RATE)", "data.ctrate_root")
        root = Path(cfg.data.ctrate_root)
    unknown = set(cfg.data.report_fields) - {"Findings_EN", "Impressions_EN"}
    if unknown or not cfg.data.report_fields:
        raise ConfigError(f"data.report_fields must name Findings_EN and/or Impressions_EN, got "
                          f"{list(cfg.data.report_fields)}", "data.report_fields")
    records = {split: [dataclasses.asdict(r) | {"path": str(r.path)}
                       for r in ctrate.read_split(root, split, cfg.data.release)] for split in ctrate.SPLITS}
    for name, enc in cfg.encoders.items():
        if enc.tiny is not None:
            corpus = [report_text(r, cfg.data.report_fields) for r in records["train"]]
            build_tiny_bert(enc.path, corpus + [p for pair in prompts() for p in pair], enc.tiny)
            print(f"built tiny text encoder {name} at {enc.path}")
    atomic.write_json(out / RECORDS, {"root": str(root), "release": cfg.data.release, "records": records})
    print(json.dumps({"release": cfg.data.release, **{s: len(r) for s, r in records.items()}}))
    return out


def _fingerprint(cfg: CtClipConfig) -> dict:
    # "axes" and "sizes": shards written before preprocessing followed upstream (axes (z, y, x), sizes
    # rounded) do not match, and are written again.
    return {"spacing": list(cfg.data.spacing), "shape": list(cfg.data.shape), "hu_range": list(HU_RANGE),
            "axes": "zxy", "sizes": "floor",
            "pad_value": PAD_VALUE, "report_fields": list(cfg.data.report_fields),
            "shard_samples": cfg.data.shard_samples, "release": cfg.data.release}


def _process(task: tuple[dict, tuple, tuple, tuple]) -> dict:
    """One volume: read, to HU, preprocess; runs in a worker process."""
    record, spacing, shape, fields = task
    path = Path(record["path"])
    stored = ctrate.load_volume(path)
    hu, rescaled = ctrate.hounsfield(stored, record["slope"], record["intercept"], str(path))
    volume = preprocess(hu, record["spacing"], spacing, shape)
    meta = {"name": record["name"], "rescaled": rescaled, "source_shape": list(stored.shape),
            "source_spacing": list(record["spacing"])}
    return encode_sample(record["name"].removesuffix(".nii.gz"), volume, report_text(record, fields),
                         tuple(record["labels"]), meta)


def _init_worker() -> None:
    torch.set_num_threads(1)


def write_split(records: list[dict], out: Path, cfg: CtClipConfig, workers: int, extra: dict) -> dict:
    """Shards `{split}-NNNNNN.tar` of `data.shard_samples` each and their manifest; finished shards stay."""
    per = cfg.data.shard_samples
    n_shards = -(-len(records) // per)
    names = [out / f"{extra['split']}-{i:06d}.tar" for i in range(n_shards)]
    first = next((i for i, p in enumerate(names) if not p.exists()), n_shards)
    if first:
        print(f"{extra['split']}: {first} of {n_shards} shards already written, continuing")
    todo = records[first * per:]
    partial = out / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    tasks = [(r, tuple(cfg.data.spacing), tuple(cfg.data.shape), tuple(cfg.data.report_fields)) for r in todo]
    if tasks:
        _write_shards(tasks, partial / f"{extra['split']}-%06d.tar", out, first, per, workers, extra["split"])
    shutil.rmtree(partial)
    return shards.write_manifest(names, out / "manifest.json", extra)


def _write_shards(tasks: list[tuple], pattern: Path, out: Path, first: int, per: int, workers: int,
                  split: str) -> None:
    finished = False

    def publish(fname: str) -> None:
        # ShardWriter also closes its open shard when an error unwinds: only a full shard, or the last
        # one once every sample is in, is moved into place and counts as written.
        if sink.count == per or (finished and sink.count > 0):
            os.replace(fname, out / Path(fname).name)

    start = time.perf_counter()
    context = multiprocessing.get_context("fork")
    # mtime 0: the same volumes give byte-identical shards (and manifests) on every run.
    with context.Pool(max(1, workers), initializer=_init_worker) as pool, \
            wds.ShardWriter(str(pattern), maxcount=per, start_shard=first, post=publish, verbose=0,
                            mtime=0.0) as sink:
        for done, sample in enumerate(pool.imap(_process, tasks), start=1):
            sink.write(sample)
            if done % max(1, len(tasks) // 10) == 0 or done == len(tasks):
                elapsed = time.perf_counter() - start
                print(f"{split}: {done}/{len(tasks)} volumes, {done / elapsed:.1f}/s, "
                      f"ETA {(len(tasks) - done) * elapsed / done:.0f} s", flush=True)
        finished = True


def write_shards(cfg: CtClipConfig, args: argparse.Namespace | None = None) -> Path:
    saved = json.loads((Path(cfg.paths.prepared) / RECORDS).read_text())
    out = Path(cfg.paths.shards)
    fingerprint = _fingerprint(cfg)
    params = out / "params.json"
    if params.exists() and json.loads(params.read_text()) != fingerprint:
        print(f"{out} holds shards of other preprocessing settings; writing them again")
        shutil.rmtree(out)
    atomic.write_json(params, fingerprint)
    workers = args.workers if args is not None and args.workers else cfg.data.workers
    for split in ctrate.SPLITS:
        extra = {"split": split, "shape": list(cfg.data.shape), "dtype": "float16", "encoding": "npy",
                 "labels": list(ctrate.LABELS), "source": cfg.data.source, "release": saved["release"],
                 "preprocessing": fingerprint}
        manifest = write_split(saved["records"][split], out / split, cfg, workers, extra)
        print(f"{split}: {manifest['samples']} samples in {len(manifest['shards'])} shards, "
              f"{manifest['bytes'] / manifest['samples'] / 1e6:.3f} MB per sample")
    return out


def check_shards(cfg: CtClipConfig, args: argparse.Namespace | None = None) -> int:
    total = 0
    for split in ctrate.SPLITS:
        manifest_path = Path(cfg.paths.shards) / split / "manifest.json"
        shape = tuple(shards.read_manifest(manifest_path)["shape"])

        def check(key: str, fields: dict[str, bytes], shape: tuple = shape) -> None:
            sample = decode_sample(key, fields, shape)
            if not (np.isfinite(sample.volume).all() and np.abs(sample.volume).max() <= 1.0):
                raise ValueError("volume values outside [-1, 1]")

        n = shards.check_shards(manifest_path, check)
        print(f"{manifest_path}: {n} samples checked")
        total += n
    if total == 0:
        raise DataError(f"no samples under {cfg.paths.shards}")
    return total
