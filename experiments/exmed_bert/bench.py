"""`bench`: throughput ratios against references measured in the same process.

(a) pretraining: samples/s of masked-code pretraining through the shared loop (`fit`: Accelerate,
    the step sampler, progress and checkpoint at the end; tracking and evaluation off) against a bare
    loop over the same model, data, masking, optimizer and schedule. Goal: ratio >= 0.95.
(b) conversion: patients/s of `prepare.convert` (validation against the ICD-10-CM table, two
    streaming passes, writing the dataset) against `json.load` of the same file: the price of validating
    and converting.
Each side is measured `repeats` times, alternating, and the best is kept.
"""

import dataclasses
import json
import time
from pathlib import Path

import torch

from experiments.exmed_bert import dataset, pretrain
from experiments.exmed_bert.config import ExMedBertConfig
from experiments.exmed_bert.prepare import convert
from medrepro import optim, repro
from medrepro.errors import DataError
from medrepro.sampling import StepBatchSampler
from medrepro.trainer import Schedule, fit


def _bare_loop(cfg: ExMedBertConfig, train_set: pretrain.MaskedPatients, vocab: dataset.Vocab) -> float:
    """Seconds for the same optimizer steps as `fit`, written out by hand."""
    tc = cfg.pretrain.train
    model = pretrain.build(cfg, "clinvec_init", vocab)
    # fit's own conversion of epochs to optimizer steps, so both sides take the same steps at the same rates.
    schedule = Schedule.from_config(tc, len(train_set))
    total = schedule.total_steps
    optimizer = optim.build_optimizer(model, tc.lr, tc.weight_decay, tc.betas)
    scheduler = optim.build_scheduler(optimizer, schedule.warmup_steps, total, tc.schedule, tc.min_lr_ratio)
    collate = pretrain.collate(cfg.pretrain.plos_days)
    loss_fn = pretrain.pretrain_loss(cfg.pretrain.plos_class_weights)
    model.train()
    t0, step, epoch = time.perf_counter(), 0, 0
    while step < total:
        train_set.set_epoch(epoch)
        for indices in StepBatchSampler(len(train_set), tc.batch_size, 1, 0, 1, cfg.seed, epoch):
            loss, _ = loss_fn(model, collate([train_set[i] for i in indices]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == total:
                break
        epoch += 1
    return time.perf_counter() - t0


def pretraining_ratio(cfg: ExMedBertConfig, workdir: Path, repeats: int) -> dict[str, float]:
    tc = dataclasses.replace(cfg.pretrain.train, tracking=dataclasses.replace(cfg.pretrain.train.tracking,
                                                                                 tensorboard=False, mlflow=False),
                             log_every_steps=10**9)
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, train=tc))
    vocab = dataset.read_vocab(cfg.paths.prepared)
    records = dataset.read_split(cfg.paths.prepared, "train")
    fit_s, bare_s = [], []
    for r in range(repeats):
        train_set = pretrain.MaskedPatients(records, len(vocab.tokens), cfg.pretrain.mask_probability, cfg.seed)
        model = pretrain.build(cfg, "clinvec_init", vocab)
        result = fit(model, train_set, tc, workdir / f"fit-{r}",
                     loss_fn=pretrain.pretrain_loss(cfg.pretrain.plos_class_weights), seed=cfg.seed,
                     collate_fn=pretrain.collate(cfg.pretrain.plos_days), run_config=cfg, variant="bench")
        fit_s.append(result.loop_seconds)
        repro.seed_everything(cfg.seed)
        bare_s.append(_bare_loop(cfg, train_set, vocab))
    samples = Schedule.from_config(tc, len(records)).total_steps * tc.batch_size
    return {"pretrain_samples": samples, "pretrain_samples_per_s_fit": samples / min(fit_s),
            "pretrain_samples_per_s_bare": samples / min(bare_s), "pretrain_ratio": min(bare_s) / min(fit_s)}


def conversion_ratio(cfg: ExMedBertConfig, workdir: Path, repeats: int) -> dict[str, float]:
    source = Path(json.loads((Path(cfg.paths.prepared) / "summary.json").read_text())["source"])
    convert_s, parse_s = [], []
    for r in range(repeats):
        out = workdir / f"convert-{r}"
        out.mkdir()
        t0 = time.perf_counter()
        convert(source, out, cfg.data, cfg.seed)
        convert_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with open(source, encoding="utf-8") as f:
            n = len(json.load(f))
        parse_s.append(time.perf_counter() - t0)
    return {"patients": n, "convert_patients_per_s": n / min(convert_s), "json_patients_per_s": n / min(parse_s),
            "conversion_ratio": min(parse_s) / min(convert_s)}


def bench(cfg: ExMedBertConfig, workdir: Path, repeats: int = 2) -> dict:
    if not (Path(cfg.paths.clinvec) / "vectors.npz").is_file():
        raise DataError(f"{cfg.paths.clinvec}/vectors.npz not found: the benchmark reads the prepared data; run "
                        "`medrepro exmed_bert prepare` and `clinvec` first")
    pretraining = pretraining_ratio(cfg, workdir, repeats)
    conversion = conversion_ratio(cfg, workdir, repeats)
    rates = {**pretraining, **conversion}
    return {
        "setting": {k: rates.pop(k) for k in ("pretrain_samples", "patients")} | {"preset": cfg.model.preset},
        "rates": {k: v for k, v in rates.items() if not k.endswith("_ratio")},
        "ratios": {"pretrain_ratio": pretraining["pretrain_ratio"], "conversion_ratio": conversion["conversion_ratio"]},
        "goals": {"pretrain_ratio": 0.95},
    }
