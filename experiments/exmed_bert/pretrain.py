"""`pretrain`: masked-code prediction (and PLOS) with the shared loop, once from random initialisation
and once from ClinVec; each run lands in <paths.pretrained>/<init>/ and its final.pt starts the
fine-tuning of the variant of the same name.

Masking is dynamic and keyed by (seed, epoch, patient): the positions and replacements of a patient
in an epoch come from a generator seeded by those three numbers alone, so a resumed run masks
exactly as the uninterrupted one did, whatever batches were already seen.
"""

import argparse
import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from experiments.exmed_bert import clinvec, dataset
from experiments.exmed_bert.config import ExMedBertConfig, ModelConfig
from experiments.exmed_bert.model import PRESETS, Encoder, PretrainModel, count_parameters, initialise, load_clinvec
from medrepro import repro
from medrepro.rundir import RunDir
from medrepro.runtime import launched_as_main
from medrepro.trainer import fit

INITS = ("random_init", "clinvec_init")
IGNORE = -100


def mask_seed(seed: int, epoch: int, patient: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}:{patient}".encode()).digest()[:8], "big") >> 1


def mask_codes(tokens: list[int], types: list[int], vocab_size: int, probability: float, generator: torch.Generator,
               first_code: int = len(dataset.SPECIALS)) -> tuple[list[int], list[int]]:
    """BERT's rule over code positions (type not 0; specials never): chosen with `probability` (at least one),
    then 80 % [MASK], 10 % a random code (ids from `first_code`, the first after the specials), 10 %
    unchanged. Returns (inputs, labels with -100 elsewhere)."""
    ids = torch.tensor(tokens)
    is_code = torch.tensor(types) != 0
    chosen = (torch.rand(len(tokens), generator=generator) < probability) & is_code
    if not chosen.any() and is_code.any():
        codes = is_code.nonzero().flatten()
        chosen[codes[torch.randint(len(codes), (1,), generator=generator)]] = True
    labels = torch.where(chosen, ids, IGNORE)
    roll = torch.rand(len(tokens), generator=generator)
    random_codes = torch.randint(first_code, vocab_size, (len(tokens),), generator=generator)
    inputs = torch.where(chosen & (roll < 0.8), dataset.MASK, ids)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_codes, inputs)
    return inputs.tolist(), labels.tolist()


class MaskedPatients(torch.utils.data.Dataset):
    def __init__(self, records: list[dict], vocab_size: int, probability: float, seed: int):
        self.records, self.vocab_size, self.probability, self.seed = records, vocab_size, probability, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        generator = torch.Generator().manual_seed(mask_seed(self.seed, self.epoch, i))
        inputs, labels = mask_codes(record["tokens"], record["types"], self.vocab_size, self.probability, generator)
        return {**record, "tokens": inputs, "labels": labels}


def collate(plos_days: float):
    def collate_fn(records: list[dict]) -> dict[str, torch.Tensor]:
        batch = dataset.pad_batch(records, plos_days)
        labels = torch.full_like(batch["tokens"], IGNORE)
        for row, r in enumerate(records):
            labels[row, :len(r["labels"])] = torch.tensor(r["labels"])
        batch["labels"] = labels
        return batch

    return collate_fn


def pretrain_loss(plos_weights: tuple[float, float]) -> Callable:
    """Masked-code cross-entropy plus the PLOS cross-entropy weighted by class (`pretrain.plos_class_weights`),
    each a mean over the global batch: over all processes' masked codes (and known stays), not a mean of
    the processes' means, so N processes train as one does on the same global batch. (Gradient
    accumulation still averages its micro-batches' means.) The logged extras are this process's means."""
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, plos = model(batch)
        labels = batch["labels"].flatten()
        known = batch["plos"] != IGNORE
        weight = torch.tensor(plos_weights, dtype=torch.float32, device=logits.device)
        if not distributed():
            mlm = F.cross_entropy(logits.flatten(0, 1), labels, ignore_index=IGNORE)
            extras = {"mlm_loss": mlm.detach()}
            if plos is None or not known.any():
                return mlm, extras
            plos_loss = F.cross_entropy(plos, batch["plos"], weight=weight, ignore_index=IGNORE)
            extras["plos_loss"] = plos_loss.detach()
            return mlm + plos_loss, extras
        # Sums over the global counts (in one process, sum/count differs from the mean in the last bits,
        # hence two branches).
        masked = (labels != IGNORE).sum()
        mlm_sum = F.cross_entropy(logits.flatten(0, 1), labels, ignore_index=IGNORE, reduction="sum")
        extras = {"mlm_loss": (mlm_sum / masked).detach()}
        loss = global_mean(mlm_sum, masked)
        if plos is not None:
            # Every process adds the term, one without a known stay too (zero), so DDP sees the head used.
            plos_sum = F.cross_entropy(plos, batch["plos"], weight=weight, ignore_index=IGNORE, reduction="sum")
            stays = weight[batch["plos"][known]].sum()
            if known.any():
                extras["plos_loss"] = (plos_sum / stays).detach()
            loss = loss + global_mean(plos_sum, stays)
        return loss, extras

    return loss_fn


def distributed() -> bool:
    return torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def global_mean(local_sum: torch.Tensor, local_count: torch.Tensor) -> torch.Tensor:
    """This process's part of `Σ sums / Σ counts` over all processes, scaled for DDP, which averages the
    processes' gradients: `local_sum · N / Σ counts`."""
    count = local_count.detach().float().clone()
    torch.distributed.all_reduce(count)
    return local_sum * torch.distributed.get_world_size() / count.clamp_min(1e-12)


@torch.no_grad()
def validation_metrics(model: nn.Module, items: list[dict], batch_size: int, plos_days: float,
                       plos_weights: tuple[float, float]) -> dict[str, float]:
    """Validation loss and accuracies over masked items, in batches of `batch_size` on the model's device.

    Sums over batches, weighted by masked positions (MLM) and the class weights of known stays (PLOS), so
    the result is the training loss's one-batch computation (mean masked-code cross-entropy + weighted mean
    PLOS cross-entropy) up to the order of float summation; the whole split never sits in memory as one batch.
    """
    device = next(model.parameters()).device
    make = collate(plos_days)
    weight = torch.tensor(plos_weights, dtype=torch.float32, device=device)
    mlm_loss = plos_loss = plos_weight = 0.0
    masked = mlm_correct = known = plos_correct = 0
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in make(items[start:start + batch_size]).items()}
        logits, plos = model(batch)
        mask = batch["labels"] != IGNORE
        targets = batch["labels"][mask]
        chosen = logits[mask].float()
        mlm_loss += F.cross_entropy(chosen, targets, reduction="sum").item()
        mlm_correct += int((chosen.argmax(-1) == targets).sum())
        masked += int(mask.sum())
        has_stay = batch["plos"] != IGNORE
        if plos is not None and has_stay.any():
            stays = batch["plos"][has_stay]
            plos_loss += F.cross_entropy(plos[has_stay].float(), stays, weight=weight, reduction="sum").item()
            plos_weight += weight[stays].sum().item()
            plos_correct += int((plos[has_stay].argmax(-1) == batch["plos"][has_stay]).sum())
            known += int(has_stay.sum())
    metrics = {"val/loss": mlm_loss / masked + (plos_loss / plos_weight if known else 0.0),
               "val/mlm_acc": mlm_correct / masked}
    if known:
        metrics["val/plos_acc"] = plos_correct / known
    return metrics


def build(cfg: ExMedBertConfig, init: str, vocab: dataset.Vocab) -> PretrainModel:
    """The pretraining model of one initialisation, seeded, with ClinVec rows copied in for clinvec_init."""
    repro.seed_everything(cfg.seed, cfg.pretrain.train.deterministic)
    vectors, initialised, method = clinvec.read_initialisation(cfg.paths.clinvec)
    projection = vectors.shape[1] if method == "learned_projection" and init == "clinvec_init" else 0
    encoder = Encoder(cfg.model, len(vocab.tokens), len(vocab.sexes), len(vocab.states), projection)
    model = PretrainModel(encoder, len(vocab.tokens), cfg.pretrain.plos)
    initialise(model, cfg.model.init)
    if init == "clinvec_init":
        load_clinvec(encoder, vectors, initialised)
    return model


def pretrain_one(cfg: ExMedBertConfig, init: str, run: RunDir, resume: str | None = None) -> None:
    vocab = dataset.read_vocab(cfg.paths.prepared)
    train_set = MaskedPatients(dataset.read_split(cfg.paths.prepared, "train"), len(vocab.tokens),
                               cfg.pretrain.mask_probability, cfg.seed)
    # Validation masks are fixed: epoch 0 of another seed stream.
    val = MaskedPatients(dataset.read_split(cfg.paths.prepared, "val"), len(vocab.tokens),
                         cfg.pretrain.mask_probability, cfg.seed + 1)
    val_items = [val[i] for i in range(len(val))]
    model = build(cfg, init, vocab)
    if launched_as_main():
        print(f"pretraining {init}: preset {cfg.model.preset}, {count_parameters(model):,} parameters")

    def evaluate(model: nn.Module) -> dict[str, float]:
        return validation_metrics(model, val_items, cfg.eval.batch_size, cfg.pretrain.plos_days,
                                  cfg.pretrain.plos_class_weights)

    fit(model, train_set, cfg.pretrain.train, run, loss_fn=pretrain_loss(cfg.pretrain.plos_class_weights),
        seed=cfg.seed,
        collate_fn=collate(cfg.pretrain.plos_days), evaluate=evaluate, resume=resume,
        run_name=f"exmed_bert-pretrain-{init}", run_config=cfg,
        data=[Path(cfg.paths.prepared) / "train.jsonl", Path(cfg.paths.clinvec) / "vectors.npz"], variant=init)


def pretrain(cfg: ExMedBertConfig, args: argparse.Namespace | None = None) -> Path:
    """Both runs; with `--resume latest` a run that left checkpoints continues, one that left none starts."""
    resume = getattr(args, "resume", None)
    for init in INITS:
        run = pretrained_run(cfg, init)
        pretrain_one(cfg, init, run, resume if resume is not None and run.step_checkpoints() else None)
    return Path(cfg.paths.pretrained)


def pretrained_run(cfg: ExMedBertConfig, init: str) -> RunDir:
    """The pretraining run of one initialisation, `<paths.pretrained>/<init>`."""
    return RunDir(Path(cfg.paths.pretrained) / init)


def pretrained_encoder(cfg: ExMedBertConfig, init: str) -> dict[str, torch.Tensor]:
    """The encoder weights of a finished pretraining run."""
    run = pretrained_run(cfg, init)
    run.completion(init, "finish it with `medrepro exmed_bert pretrain --resume latest`")
    state = run.load("final", init)["model"]
    return {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}


def parameter_counts(vocab_size: int = 30000, n_sexes: int = 4, n_states: int = 60) -> dict[str, int]:
    """Pretraining-model parameters of each preset at a given vocabulary size (for the README)."""
    return {p: count_parameters(PretrainModel(Encoder(ModelConfig(preset=p), vocab_size, n_sexes, n_states),
                                              vocab_size, True)) for p in PRESETS}

