"""exmed_bert's dry run (`medrepro exmed_bert dryrun`): configs/full.yaml (small preset, sequences of
512 positions, pretraining batch 256, fine-tuning batch 64, ClinVec initialisation, 500-tree
baselines) on 40 generated patients whose sequences fill the 512 positions.

Only the data source and size and the step counts differ from the full profile. There is no hub
model: ExMed-BERT is built from the preset and the vocabulary of the converted data, here the
synthetic one (about 220 codes; a real cohort's vocabulary is larger, see the README, Dry run).
"""

import dataclasses
from pathlib import Path

import numpy as np
import torch

from experiments.exmed_bert import clinvec, dataset
from experiments.exmed_bert.config import ExMedBertConfig
from experiments.exmed_bert.endpoint import endpoint_model
from experiments.exmed_bert.prepare import prepare
from experiments.exmed_bert.pretrain import MaskedPatients, build, collate, pretrain_loss
from experiments.exmed_bert.train import endpoint_loss
from medrepro.dryrun import Probe

OVERRIDES = [
    # 40 synthetic patients (32 train, 4 validation, 4 test) of 120-130 visits: about 560 positions,
    # truncated to the full profile's 512 (keep_last); synthetic ClinVec files in the real layout.
    "data.source=synthetic", "data.synthetic_patients=40", "data.synthetic_visits=[120,130]",
    "clinvec.directory=",
    # Two optimizer steps per run with a validation after each, checkpoints; no loader workers.
    "pretrain.train.epochs=1", "pretrain.train.batch_size=16", "pretrain.train.eval_every_epochs=0.5",
    "pretrain.train.num_workers=0",
    "train.epochs=1", "train.batch_size=16", "train.eval_every_epochs=0.5", "train.num_workers=0",
    "eval.batch_size=2",
]


def model_overrides(cfg: ExMedBertConfig, models: Path) -> tuple[list[str], dict[str, str]]:
    return [], {}  # no hub model: the encoder is built from the preset


def _prepared(cfg: ExMedBertConfig, workdir: Path) -> ExMedBertConfig:
    """The dry run's data converted into `workdir`/probe (the stages write their own under `workdir`)."""
    root = workdir / "probe"
    paths = dataclasses.replace(cfg.paths, prepared=str(root / "prepared"), clinvec=str(root / "clinvec"),
                                pretrained=str(root / "pretrained"), runs=str(root / "runs"),
                                results=str(root / "results"))
    cfg = dataclasses.replace(cfg, paths=paths)
    prepare(cfg)
    clinvec.clinvec_stage(cfg)
    return cfg


def probes(cfg: ExMedBertConfig, full: ExMedBertConfig, workdir: Path) -> list[Probe]:
    cfg = _prepared(cfg, workdir)
    vocab = dataset.read_vocab(cfg.paths.prepared)
    records = dataset.read_split(cfg.paths.prepared, "train")
    longest = [r for r in records if len(r["tokens"]) == cfg.data.max_length]
    if not longest:
        raise ValueError(f"no synthetic patient reaches data.max_length {cfg.data.max_length}: raise "
                         "data.synthetic_visits in the dry run's OVERRIDES")
    masked = MaskedPatients(longest, len(vocab.tokens), cfg.pretrain.mask_probability, cfg.seed)

    def pretrain_batch(n: int) -> dict[str, torch.Tensor]:
        return collate(cfg.pretrain.plos_days)([masked[i % len(longest)] for i in range(n)])

    def endpoint_batch(n: int) -> dict[str, torch.Tensor]:
        return dataset.pad_batch([longest[i % len(longest)] for i in range(n)], cfg.pretrain.plos_days)

    loss_fn = pretrain_loss(cfg.pretrain.plos_class_weights)

    def masked_code_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return loss_fn(model, batch)[0]

    # As pretrain.py builds it (ClinVec initialisation), then as train.py builds the fine-tuned model
    # from its encoder.
    pretrain_model = build(cfg, "clinvec_init", vocab)
    encoder_state = {k: v.clone() for k, v in pretrain_model.encoder.state_dict().items()}
    labels = np.array([r["endpoint"] for r in records])
    positive_weight = torch.tensor((labels == 0).sum() / max(1, (labels == 1).sum()), dtype=torch.float32)
    fine_tune = endpoint_loss(positive_weight)

    endpoint = endpoint_model(cfg, vocab, encoder_state)
    pretrain_batch_size, train_batch_size = full.pretrain.train.batch_size, full.train.batch_size
    return [
        Probe("PretrainModel", pretrain_model, pretrain_batch, masked_code_loss, full_batch=pretrain_batch_size,
              full_batch_note=f"pretrain.train.batch_size {pretrain_batch_size} on one GPU",
              parts={"encoder layers": pretrain_model.encoder.layers}),
        Probe("EndpointModel", endpoint, endpoint_batch, lambda model, batch: fine_tune(model, batch)[0],
              full_batch=train_batch_size, full_batch_note=f"train.batch_size {train_batch_size} on one GPU",
              parts={"encoder layers": endpoint.encoder.layers}),
    ]
