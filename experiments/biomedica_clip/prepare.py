"""`prepare`: synthetic BIOMEDICA-style shards, their manifests, the CSV twin and the tiny model.

    <paths.prepared>/train/000000.tar ...   training shards (+ sizes.json, manifest.json)
    <paths.prepared>/heldout/000000.tar     the held-out shard, all 16 classes (+ sizes.json, manifest.json)
    <paths.prepared>/csv/                   train.csv, heldout.csv and images/ for --dataset-type csv
    <paths.prepared>/model/                 the tiny open_clip model and its "pretrained" weights (smoke)

Real shards are read where they lie (`audit` checks them); for them prepare only writes the tiny
model when the config asks for one.
"""

import argparse
from pathlib import Path

from experiments.biomedica_clip import synthetic
from experiments.biomedica_clip.config import BiomedicaClipConfig
from experiments.biomedica_clip.model import write_tiny_model
from medrepro import atomic, shards


def prepare(cfg: BiomedicaClipConfig, args: argparse.Namespace | None = None) -> None:
    syn = cfg.data.synthetic
    with atomic.atomic_dir(cfg.paths.prepared) as tmp:
        if cfg.data.source == "synthetic":
            n_train = syn.train_shards * syn.samples_per_shard
            for split, count, per_shard in (("train", n_train, syn.samples_per_shard),
                                            ("heldout", syn.heldout_samples, syn.heldout_samples)):
                directory = tmp / split
                synthetic.write_shards(directory, synthetic.samples(cfg.seed, split, count, syn), per_shard)
                shards.write_manifest(sorted(directory.glob("*.tar")), directory / "manifest.json",
                                      {"source": f"synthetic {split}", "seed": cfg.seed})
            synthetic.write_csv_twin(tmp / "csv", synthetic.samples(cfg.seed, "train", n_train, syn))
            synthetic.write_csv_twin(tmp / "csv", synthetic.samples(cfg.seed, "heldout", syn.heldout_samples, syn),
                                     "heldout.csv")
            print(f"prepare: {syn.train_shards} training shards of {syn.samples_per_shard} samples "
                  f"({len(synthetic.TRAIN_CLASSES)} classes), a held-out shard of {syn.heldout_samples} "
                  f"({len(synthetic.ALL_CLASSES)} classes, {len(synthetic.HELDOUT_CLASSES)} unseen), the CSV twin")
        if cfg.model.tiny:
            write_tiny_model(tmp / "model", cfg.model.tiny, cfg.model.tiny_seed)
            print(f"prepare: tiny open_clip model in {Path(cfg.paths.prepared) / 'model'}")
