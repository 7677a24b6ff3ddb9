"""cross_encoder's dry run (`medrepro cross_encoder dryrun`): configs/full.yaml at real size (SapBERT as
bi-encoder and cross-encoder start, HNSW index over 64 principal components re-ranked on all 768,
pairs of 128 tokens, micro-batch 32) on 100 synthetic concepts and 6 synthetic documents.

Only the data source and size and the step counts differ from the full profile; SapBERT is the
published checkpoint when this machine has it, else its published architecture with random weights
(one stand-in for both roles, as the full profile names the same hub id twice).
"""

from pathlib import Path

import torch

from experiments.cross_encoder import model as cross
from experiments.cross_encoder import pair_text
from experiments.cross_encoder.config import CrossEncoderConfig
from medrepro import hub
from medrepro.dryrun import Probe

OVERRIDES = [
    # 100 concepts (more than mining.candidates 64) and 40 documents: the dev documents are halved into
    # dev and calibration, and each half needs a linkable mention.
    "data.source=synthetic", "data.synthetic_concepts=100", "data.synthetic_documents=40",
    # Two optimizer steps of 4 pairs (micro-batch 2 × grad_accum 2), a validation after each, checkpoints.
    "train.batch_size=4", "train.epochs=0.02", "train.eval_every_epochs=0.01", "train.num_workers=0",
]


def model_overrides(cfg: CrossEncoderConfig, models: Path) -> tuple[list[str], dict[str, str]]:
    overrides, sources = [], {}
    for role in ("biencoder", "cross_encoder"):
        name = getattr(cfg, role).path
        path, source = hub.local_or_stand_in(name, models / name.replace("/", "--"))
        overrides.append(f"{role}.path={path}")
        sources[f"{role}.path"] = f"{name}: {source}"
    return overrides, sources


def probes(cfg: CrossEncoderConfig, full: CrossEncoderConfig, workdir: Path) -> list[Probe]:
    micro_batch = full.train.batch_size // full.train.grad_accum
    model, tokenizer = cross.load(cfg.cross_encoder.path)  # as train builds it: a fresh one-logit head
    sentence = "we reviewed the records of forty patients with chronic renal failure and acute hepatic injury"
    words = sentence.split(" ")
    left = " ".join((words * 4)[:cfg.data.context_words])
    right = " ".join((words[::-1] * 4)[:cfg.data.context_words])
    first = pair_text.mention_input("acute-on-chronic renal failure", left, right)
    second = pair_text.candidate_input("Acute-on-chronic renal failure, acute-on-chronic kidney failure",
                                       ["Disease or Syndrome", "Finding"])
    collate = cross.collate(tokenizer, cfg.max_length)

    def batch(n: int) -> dict[str, torch.Tensor]:
        out = collate([(first, second, i % 2) for i in range(n)])
        if out["input_ids"].shape[1] != cfg.max_length:
            raise ValueError(f"the probe's pairs are {out['input_ids'].shape[1]} tokens, not max_length "
                             f"{cfg.max_length}: lengthen them")
        return out

    return [Probe("CrossEncoder", model, batch, lambda model, batch: cross.loss_fn(model, batch)[0],
                  full_batch=micro_batch,
                  full_batch_note=f"train.batch_size {full.train.batch_size} / grad_accum {full.train.grad_accum}",
                  parts={"SapBERT": model.base_model})]
