"""`medrepro retclip <command>`: the experiment's command line and its image's entry point."""

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments.retclip.config import RetClipConfig
from medrepro.cli_args import add_config_args, resolve_config

CONFIG_DIR = Path(__file__).parent / "configs"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medrepro retclip",
        description="RET-CLIP on ODIR-5K: three text encoders compared by zero-shot classification.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = commands.add_parser("prepare", help="ODIR-5K (or synthetic data) → prepared/patients.jsonl")
    add_config_args(p)

    p = commands.add_parser("build-lmdb", help="patients.jsonl → LMDB in the RET-CLIP layout")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    add_config_args(p)

    p = commands.add_parser("train", help="train RET-CLIP with one text encoder")
    p.add_argument("--encoder", required=True, help="a key of `encoders` in the config")
    p.add_argument("--out", type=Path, help="run directory (default: <paths.runs>/<encoder>)")
    p.add_argument("--resume", help="`latest` or a checkpoint path")
    add_config_args(p)

    p = commands.add_parser("evaluate", help="zero-shot test metrics, CIs and plots for one encoder")
    p.add_argument("--encoder", required=True)
    p.add_argument("--run", type=Path, help="run directory (default: <paths.runs>/<encoder>)")
    p.add_argument("--out", type=Path, help="results directory (default: <paths.results>/<encoder>)")
    p.add_argument("--checkpoint", default="best", help="`best` or a checkpoint path")
    add_config_args(p)

    p = commands.add_parser("smoke", help="the whole pipeline on synthetic data in --out (CPU, minutes)")
    p.add_argument("--out", type=Path, default=Path("smoke-out"), help="working directory for every output")
    p.add_argument("--encoders", help="comma-separated subset of the config's encoders")
    add_config_args(p)

    p = commands.add_parser("bench", help="training and data-loading throughput ratios, as JSON")
    p.add_argument("--out", type=Path, default=Path("bench/retclip.json"))
    p.add_argument("--steps", type=int, default=20)
    add_config_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(RetClipConfig, args, CONFIG_DIR)

    if args.command == "prepare":
        from experiments.retclip.prepare import prepare

        prepare(cfg)
    elif args.command == "build-lmdb":
        from experiments.retclip.prepare import build

        build(cfg, args.workers)
    elif args.command == "train":
        from experiments.retclip.train import train

        train(cfg, args.encoder, args.out or Path(cfg.paths.runs) / args.encoder, args.resume)
    elif args.command == "evaluate":
        from experiments.retclip.evaluate import evaluate

        run = args.run or Path(cfg.paths.runs) / args.encoder
        evaluate(cfg, args.encoder, run, args.out or Path(cfg.paths.results) / args.encoder, args.checkpoint)
    elif args.command == "smoke":
        smoke(cfg, args.out, args.encoders.split(",") if args.encoders else list(cfg.encoders))
    elif args.command == "bench":
        from experiments.retclip.bench import run_benchmarks

        run_benchmarks(cfg, args.out, args.steps)
    return 0


def smoke(cfg: RetClipConfig, out: Path, encoders: list[str]) -> None:
    """prepare → build-lmdb → train and evaluate each encoder, everything under `out`."""
    from experiments.retclip.evaluate import evaluate
    from experiments.retclip.prepare import build, prepare
    from experiments.retclip.train import train
    from medrepro import checkpoint, report

    out.mkdir(parents=True, exist_ok=True)
    # Every path in the config is relative, so running from `out` keeps all outputs there.
    os.chdir(out)
    t0 = time.perf_counter()
    prepare(cfg)
    build(cfg)
    for encoder in encoders:
        run = Path(cfg.paths.runs) / encoder
        resume = "latest" if checkpoint.step_checkpoints(run / "checkpoints") else None
        train(cfg, encoder, run, resume=resume)
        result = evaluate(cfg, encoder, run, Path(cfg.paths.results) / encoder)
        print(f"retclip {encoder}: zero-shot accuracy {result['accuracy']:.3f} "
              f"(chance {result['chance_accuracy']:.3f}), balanced {result['balanced_accuracy']:.3f}")
    report.write_report(Path(cfg.paths.results).parent)
    print(f"smoke finished in {time.perf_counter() - t0:.0f}s; results in {out.resolve() / cfg.paths.results}",
          file=sys.stderr)
