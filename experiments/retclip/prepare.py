"""`prepare` and `build-lmdb`: from the raw dataset (real or synthetic) to the LMDB tables."""

import argparse
import json
from collections import Counter
from pathlib import Path

from experiments.retclip import odir
from experiments.retclip.config import RetClipConfig
from experiments.retclip.data import SPLITS, build_lmdb, make_records, prepared_fingerprint, read_records, write_records
from experiments.retclip.prompts import class_prompts, load_prompts
from experiments.retclip.synthetic import write_synthetic_odir
from medrepro import atomic, repro
from medrepro.errors import ConfigError, DataError
from medrepro.tiny import build_tiny_bert


def prepare(cfg: RetClipConfig, args: argparse.Namespace | None = None) -> Path:
    """Read ODIR-5K (generating the synthetic twin first for `data.source: synthetic`) into patients.jsonl.

    In the synthetic profile, tiny text encoders are built here too, with vocabularies learned from the
    synthetic reports, so that nothing downstream needs the model hub.
    """
    out = Path(cfg.paths.prepared)
    prompts = load_prompts(Path(cfg.prompts) if cfg.prompts else None)
    if cfg.data.source == "synthetic":
        root = write_synthetic_odir(out / "synthetic", cfg.data.synthetic_patients, cfg.seed)
    else:
        if not cfg.data.odir_root:
            raise ConfigError("data.odir_root is empty: point it at the ODIR-5K directory (data.odir_root=/data/odir)")
        root = Path(cfg.data.odir_root)
        if cfg.data.checksums:
            repro.verify_sha256_manifest(Path(cfg.data.checksums), root)
    patients = odir.read_odir(root)
    splits = odir.split_patients(patients, cfg.data.split, cfg.seed)
    empty = [name for name in SPLITS if not splits[name]]
    if empty:
        # An empty train split leaves nothing to train on; an empty valid or test split nothing to select
        # a checkpoint or to report on: every later stage would fail or mean nothing.
        raise DataError(f"the {empty[0]} split of {len(patients)} patients is empty (data.split "
                        f"{list(cfg.data.split)}): give it a larger fraction or use more patients")
    records = make_records(splits, prompts)

    corpus = [r.text for r in records] + [t for side in ("left", "right") for ts in class_prompts(prompts, side)
                                           for t in ts]
    for name, enc in cfg.encoders.items():
        if enc.tiny is not None:
            build_tiny_bert(enc.path, corpus, enc.tiny)
            print(f"built tiny text encoder {name} at {enc.path}")

    write_records(out / "patients.jsonl", records)
    summary = {
        "source": cfg.data.source,
        "root": str(root),
        "patients": {s: len(splits[s]) for s in SPLITS},
        "eye_labels": dict(Counter(label for r in records for label in r.left_labels + r.right_labels)),
        "eyes_without_label": len(odir.unlabelled_eyes(patients)),
        "label_disagreements": len(odir.label_disagreements(patients)),
        "prompts_version": prompts.version,
    }
    atomic.write_json(out / "summary.json", summary)
    print(json.dumps(summary))
    return out


def build(cfg: RetClipConfig, args: argparse.Namespace | None = None) -> Path:
    patients = Path(cfg.paths.prepared) / "patients.jsonl"
    records = read_records(patients)
    out = Path(cfg.paths.lmdb)
    workers = args.workers if args is not None else 4
    counts = build_lmdb(records, out, cfg.data.lmdb_image_size, cfg.data.jpeg_quality,
                        prepared_fingerprint(patients), workers)
    print(f"wrote {out}: " + ", ".join(f"{s} {n} patients" for s, n in counts.items()))
    return out
