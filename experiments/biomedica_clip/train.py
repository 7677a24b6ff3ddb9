"""`train`: open_clip's own trainer (open_clip_train's `main`, torchrun for several processes),
with arguments built from our config, and its outputs gathered into our run layout.

    <run>/open_clip_args.json     the launcher command and open_clip_train's arguments, as run
    <run>/identity.json           the run's identity (what a resume must match)
    <run>/logs/open_clip/         open_clip_train's own layout: out.log, params.txt, checkpoints/epoch_N.pt,
                                  tensorboard/
and the suite's own files (`medrepro.rundir`): config and manifest, the training log made of
open_clip_train's progress lines, and the completion mark once the final epoch's checkpoint exists.

open_clip_train runs with the run directory as its working directory and its default `--logs ./logs`:
torchrun's own parser takes `--logs` for an abbreviation of its `--logs-specs` and stops, so the flag
cannot be passed through torchrun. Every path in the arguments is therefore relative to the run
directory, which also keeps the recorded arguments (and open_clip's params.txt) the same wherever the
project lies.
open_clip_train runs through `open_clip_compat`, which works around two defects of the pinned
open_clip_torch 3.3.0 + webdataset 1.0.2 (WebDataset training stops after its first shard; DDP on CPU
is refused), keys every epoch's random draws by (seed, rank, worker, epoch) so that a resumed run ends
with the uninterrupted run's weights, and otherwise calls open_clip_train's `main` unchanged.
"""

import csv
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from experiments.biomedica_clip import archive, open_clip_compat
from experiments.biomedica_clip.config import (
    IDENTITY_FILE,
    OPEN_CLIP_NAME,
    BiomedicaClipConfig,
    checkpoint_path,
    logs_dir,
)
from experiments.biomedica_clip.model import trainer_model_args
from medrepro import atomic, repro, run_guard, runtime, shards
from medrepro.errors import ConfigError, DataError, RunError, TrainingError
from medrepro.rundir import RunDir

_PROGRESS = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) .*?LR: ([0-9.e+-]+) Logit Scale: ([0-9.]+) "
                       r".*?Loss: ([0-9.e+-]+) \(")
_RATE = re.compile(r"Batch \(t\): [0-9.]+, ([0-9.e+-]+)/s")
# The starts of records on open_clip_train's console: its own logger's, and torch's (open_clip_train raises
# every logger to INFO). The lines up to the next start belong to the record (the model's printout).
_RECORD = re.compile(r"\d{4}-\d\d-\d\d,\d\d:\d\d:\d\d \| (\w+) \| (.*)")
_TORCH_RECORD = re.compile(r"([DIVWEF])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ")
_PYTHON_WARNING = re.compile(r"\S+:\d+: \w*Warning: ")
_PROGRESS_RECORDS = ("Train Epoch:", "Eval Epoch:")


def data_args(cfg: BiomedicaClipConfig, run_dir: Path) -> list[str]:
    """--dataset-type and its data flags; refuses, before anything starts, what open_clip would assert on."""
    t = cfg.train
    if t.dataset_type == "synthetic":
        if not t.train_num_samples:
            raise ConfigError("train.dataset_type synthetic needs train.train_num_samples", "train.train_num_samples")
        return ["--dataset-type", "synthetic", "--train-num-samples", str(t.train_num_samples)]
    if t.dataset_type == "csv":
        args = ["--dataset-type", "csv", "--csv-img-key", "filepath", "--csv-caption-key", "caption"]
        for table, flag in (("train.csv", "--train-data"), ("heldout.csv", "--val-data")):
            args += [flag, from_run(csv_for_run(Path(cfg.paths.prepared) / "csv" / table, Path(run_dir) / table),
                                    run_dir)]
        return args

    sources = archive.train_sources(cfg)
    if cfg.data.upsampling and not t.dataset_resampled:
        raise ConfigError("data.upsampling needs train.dataset_resampled=true (open_clip samples sources with "
                          "replacement only then)", "data.upsampling")
    n_shards = sum(len(s.paths) for s in sources)
    if not t.dataset_resampled:
        shards.check_shard_count(n_shards, t.processes, t.workers)
    args = ["--dataset-type", "webdataset",
            "--train-data", "::".join(from_run(s.pattern, run_dir) for s in sources)]
    if cfg.data.upsampling:
        args += ["--train-data-upsampling-factors", "::".join(f"{s.factor:g}" for s in sources)]
    if t.dataset_resampled:
        args.append("--dataset-resampled")
    samples = t.train_num_samples or source_samples(sources)
    heldout = archive.heldout_sources(cfg)
    archive.check_disjoint_shards(sources, heldout)
    # open_clip reads sizes.json beside the first shard only; the counts are passed for every source.
    return [*args, "--train-num-samples", str(samples),
            "--val-data", "::".join(from_run(s.pattern, run_dir) for s in heldout),
            "--val-num-samples", str(source_samples(heldout))]


def from_run(path: str | Path, run_dir: Path) -> str:
    """`path` as open_clip_train sees it from the run directory, its working directory."""
    return os.path.relpath(Path(path).resolve(), Path(run_dir).resolve())


def csv_for_run(table: Path, copy: Path) -> Path:
    """A copy of a CSV twin table whose image paths are relative to the run directory (open_clip opens
    them as written, from its working directory)."""
    if not table.is_file():
        raise DataError(f"{table} not found: run `medrepro biomedica_clip prepare` (the CSV twin)")
    with open(table, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    with atomic.atomic_path(copy) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(rows[0])
        writer.writerows([from_run(table.parent / p, copy.parent), c] for p, c in rows[1:])
    return copy


def source_samples(sources: list[archive.Source]) -> int:
    total = 0
    for source in sources:
        sizes_path = source.directory / archive.SIZES
        if not sizes_path.is_file():
            raise DataError(f"{sizes_path} not found: run `medrepro biomedica_clip audit` (it writes it), or set "
                            "train.train_num_samples")
        sizes = json.loads(sizes_path.read_text())
        missing = [p.name for p in source.paths if p.name not in sizes]
        if missing:
            raise DataError(f"{sizes_path} has no entry for {missing[0]}: delete it and run audit again")
        total += sum(int(sizes[p.name]) for p in source.paths)
    return total


def open_clip_args(cfg: BiomedicaClipConfig, run_dir: Path, resume: str | None) -> list[str]:
    """open_clip_train.main's argument list for this config (see `python -m open_clip_train.main --help`)."""
    t = cfg.train
    args = [*trainer_model_args(cfg, lambda p: from_run(p, run_dir)), *data_args(cfg, run_dir),
            "--name", OPEN_CLIP_NAME, "--seed", str(cfg.seed), "--device", t.device, "--precision", t.precision,
            "--batch-size", str(t.batch_size), "--epochs", str(t.epochs), "--lr", repr(t.lr), "--wd", repr(t.wd),
            "--warmup", str(t.warmup), "--accum-freq", str(t.accum_freq), "--workers", str(t.workers),
            "--save-frequency", str(t.save_frequency), "--log-every-n-steps", str(t.log_every_n_steps)]
    if t.processes > 1 and t.device == "cpu":
        args += ["--dist-backend", "gloo"]
    report = [name for name, on in (("tensorboard", t.tensorboard), ("wandb", t.wandb)) if on]
    if report:
        args += ["--report-to", ",".join(report)]
    if t.wandb:
        args += ["--wandb-project-name", t.wandb_project]
    if t.grad_clip_norm:
        args += ["--grad-clip-norm", repr(t.grad_clip_norm)]
    if t.force_patch_dropout is not None:
        args += ["--force-patch-dropout", repr(t.force_patch_dropout)]
    if t.lock_image:
        args += ["--lock-image", "--lock-image-unlocked-groups", str(t.lock_image_unlocked_groups)]
    if t.lock_text:
        args += ["--lock-text", "--lock-text-unlocked-layers", str(t.lock_text_unlocked_layers)]
    args += [flag for flag, on in (("--grad-checkpointing", t.grad_checkpointing), ("--local-loss", t.local_loss),
                                   ("--gather-with-grad", t.gather_with_grad)) if on]
    if resume:
        args += ["--resume", resume if resume == "latest" else from_run(resume, run_dir)]
    return [*args, *t.extra_args]


# Imported, not only named, so that the pipeline counts the trainer's entry point among train's code.
ENTRY = open_clip_compat.__name__


def launcher(cfg: BiomedicaClipConfig) -> list[str]:
    """open_clip_train's `main` through `open_clip_compat` (two defects of the pinned versions worked
    around, random draws keyed by epoch; see there); under torchrun with one process per device for
    processes > 1."""
    t = cfg.train
    if t.processes == 1:
        return [sys.executable, "-m", ENTRY]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(t.processes),
            "-m", ENTRY]


def train(cfg: BiomedicaClipConfig, variant: str, run: RunDir, resume: str | None = None) -> None:
    run_dir = run.path  # open_clip_train's working directory; its arguments are relative to it
    with run.locked():
        # open_clip_train itself refuses an existing log without --resume latest, but exits 0 doing so.
        existing = sorted(logs_dir(run).glob("checkpoints/*.pt"))
        if logs_dir(run).exists() and not resume:
            held = f"checkpoints ({existing[-1].name})" if existing else "an unfinished run without checkpoints"
            raise RunError(f"{run_dir} already holds {held}: continue it with --resume latest, or train into "
                           "another --out")
        archive.audit_report(cfg)  # held-out shards and articles disjoint from the training ones
        data = data_files(cfg)
        ident = run_guard.identity(cfg, variant, {str(p): repro.sha256_file(p) for p in data})
        if resume:
            saved = json.loads((run / IDENTITY_FILE).read_text()) if (run / IDENTITY_FILE).is_file() else None
            run_guard.check_resume(saved, ident, run / IDENTITY_FILE, allow_change=False, allow_key=None)
        if resume == "latest":
            set_aside_incomplete(logs_dir(run) / "checkpoints")
        command = [*launcher(cfg), *open_clip_args(cfg, run_dir, resume)]
        print("train: " + " ".join(command), flush=True)
        # Run in the run directory; the interpreter is named, not its path (manifest.json records it).
        atomic.write_json(run / "open_clip_args.json", {"command": ["python", *command[1:]]})
        atomic.write_json(run / IDENTITY_FILE, ident)
        run.begin(cfg, variant=variant, checksums=ident_checksums(ident))
        code = run_trainer(command, run_dir)
        final = checkpoint_path(run, cfg.train.epochs)
        if code != 0 or not final.is_file():
            raise TrainingError(f"open_clip_train exited with status {code}"
                                + ("" if final.is_file() else f" without writing {final.name}")
                                + f": see {logs_dir(run) / 'out.log'} and the output above")
        progress = progress_records(logs_dir(run) / "out.log", cfg)
        records = sorted([*progress, *validation_records(logs_dir(run) / "checkpoints" / "results.jsonl",
                                                         progress, cfg.train.epochs)], key=lambda r: r["step"])
        # Rates depend on the machine's load: they stay out of the log, whose bytes DVC hashes.
        atomic.write_text(run.train_log, "".join(
            json.dumps({k: v for k, v in r.items() if k != "train/samples_per_s"}) + "\n" for r in records))
        step = max((r["step"] for r in records), default=0)
        run.mark_complete(variant, ident["hash"], step, step)
        print(f"train: finished; final checkpoint {final}")


def run_trainer(command: list[str], run_dir: Path) -> int:
    """open_clip_train's exit status. Its console is quiet unless `--verbose` (`quiet_console`); its
    log, logs/open_clip/out.log, keeps every line either way."""
    if runtime.verbose():
        return subprocess.run(command, cwd=run_dir, env=trainer_env()).returncode
    # Its logger writes to stderr; stdout (a few prints) passes as it is.
    with subprocess.Popen(command, cwd=run_dir, env=trainer_env(), stderr=subprocess.PIPE, text=True,
                          errors="replace") as trainer:
        for line in quiet_console(trainer.stderr):
            print(line, end="", file=sys.stderr, flush=True)
    return trainer.returncode


def quiet_console(lines: Iterable[str]) -> Iterator[str]:
    """open_clip_train's console lines without its chatter: its warnings and errors, its progress (the
    "Train Epoch" and "Eval Epoch" records) and whatever its logger did not write (a traceback, a
    Python warning) pass; its setup records, the model's printout, its parameters and torch's INFO
    records at exit do not."""
    shown = True
    for line in lines:
        record, torch_record = _RECORD.match(line), _TORCH_RECORD.match(line)
        if record:
            shown = record[1] not in ("DEBUG", "INFO") or record[2].startswith(_PROGRESS_RECORDS)
        elif torch_record:
            shown = torch_record[1] in "WEF"
        elif line.startswith("Traceback") or _PYTHON_WARNING.match(line):
            shown = True
        if shown:
            yield line


def set_aside_incomplete(checkpoints: Path) -> None:
    """Rename checkpoints whose write did not finish to `*.pt.incomplete`.

    open_clip_train writes `epoch_N.pt` in place with torch.save, so a run killed while saving leaves a
    short file under the final name, and `--resume latest` (the newest `*.pt`) picks it and crashes.
    A torch checkpoint is a zip archive: one without its central directory or with a bad CRC is
    incomplete. Set aside, it is no longer a `*.pt`, and open_clip resumes from the newest whole one.
    """
    for path in sorted(checkpoints.glob("*.pt")):
        try:
            with zipfile.ZipFile(path) as archive_file:
                intact = archive_file.testzip() is None
        except (zipfile.BadZipFile, OSError):
            intact = False
        if not intact:
            path.rename(path.with_name(path.name + ".incomplete"))
            print(f"train: {path} is not a whole checkpoint (its zip archive fails its check: cut short by a kill "
                  f"while saving, or damaged since); set aside as {path.name}.incomplete")


def data_files(cfg: BiomedicaClipConfig) -> list[Path]:
    """What the run reads, for its identity and manifest: the shard manifests (each holds every shard's
    SHA-256), or the CSV table; the tiny model's starting weights."""
    if cfg.train.dataset_type == "csv":
        files = [Path(cfg.paths.prepared) / "csv" / table for table in ("train.csv", "heldout.csv")]
    elif cfg.train.dataset_type == "webdataset":
        files = [s.directory / archive.MANIFEST for s in (*archive.train_sources(cfg), *archive.heldout_sources(cfg))]
    else:
        files = []
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{missing[0]} not found: run `medrepro biomedica_clip prepare` and `audit` first")
    return files


def ident_checksums(ident: dict) -> dict[str, str]:
    return {k.removeprefix("data:"): v for k, v in ident["values"].items() if k.startswith("data:")}


def trainer_env() -> dict[str, str]:
    """This process's environment (runtime pins, W&B key if the user set one) with the repository on
    PYTHONPATH, since the trainer runs in the run directory (its entry point, open_clip_compat, lives here)."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}


def progress_records(log: Path, cfg: BiomedicaClipConfig) -> list[dict]:
    """open_clip_train's "Train Epoch" lines → {step, train/loss, train/lr, train/logit_scale,
    train/samples_per_s}; a resumed run's repeated steps keep their last value."""
    by_step: dict[int, dict] = {}
    per_step = cfg.train.batch_size * cfg.train.accum_freq * cfg.train.processes
    if not log.is_file():
        return []
    for line in log.read_text().splitlines():
        match = _PROGRESS.search(line)
        if match is None:
            continue
        epoch, seen, total, lr, scale, loss = match.groups()
        batches = -(-int(total) // per_step)
        step = int(epoch) * batches + int(seen) // per_step
        record = {"step": step, "train/loss": float(loss), "train/lr": float(lr), "train/logit_scale": float(scale)}
        rate = _RATE.search(line)
        if rate:
            record["train/samples_per_s"] = float(rate.group(1))
        by_step[step] = record
    return [by_step[s] for s in sorted(by_step)]


# open_clip_train's validation metrics (checkpoints/results.jsonl, one line per epoch) → our names.
VAL_NAMES = {"clip_val_loss": "loss", "image_to_text_R@1": "i2t_r1", "image_to_text_R@10": "i2t_r10",
             "text_to_image_R@1": "t2i_r1", "text_to_image_R@10": "t2i_r10"}


def validation_records(results: Path, progress: list[dict], epochs: int) -> list[dict]:
    """One record per validated epoch, at the step that ended it; a resumed run's repeat keeps the last."""
    if not results.is_file() or not progress:
        return []
    per_epoch = progress[-1]["step"] // epochs
    by_epoch = {}
    for line in results.read_text().splitlines():
        metrics = json.loads(line)
        by_epoch[int(metrics["epoch"])] = {"step": int(metrics["epoch"]) * per_epoch,
                                           **{f"val/{ours}": float(metrics[theirs]) for theirs, ours in
                                              VAL_NAMES.items() if theirs in metrics}}
    return [by_epoch[e] for e in sorted(by_epoch)]
