"""`medrepro cross_encoder <command>`: the experiment's command line and its image's entry point."""

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments.cross_encoder.config import CrossEncoderConfig
from medrepro.cli_args import add_config_args, resolve_config

CONFIG_DIR = Path(__file__).parent / "configs"
VARIANT = "sapbert"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medrepro cross_encoder",
        description="A SapBERT cross-encoder re-ranking UMLS concepts for MedMentions mentions.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = commands.add_parser("prepare", help="MedMentions + UMLS (or synthetic twins) → concepts and mentions")
    add_config_args(p)
    p = commands.add_parser("index", help="encode every concept name with the bi-encoder into a FAISS index")
    add_config_args(p)
    p = commands.add_parser("mine", help="candidates per mention, recall@k, and training pairs with hard negatives")
    add_config_args(p)

    p = commands.add_parser("train", help="train the cross-encoder; export the best checkpoint")
    p.add_argument("--out", type=Path, help="run directory (default: <paths.runs>)")
    p.add_argument("--resume", help="`latest` or a checkpoint path")
    add_config_args(p)

    p = commands.add_parser("evaluate", help="test pair metrics with calibration, and linking accuracy")
    p.add_argument("--run", type=Path, help="run directory (default: <paths.runs>)")
    p.add_argument("--out", type=Path, help=f"results directory (default: <paths.results>/{VARIANT})")
    add_config_args(p)

    p = commands.add_parser("link", help="PubTator or JSON-lines spans → ranked CUIs with calibrated confidence")
    p.add_argument("--input", type=Path, required=True,
                   help='PubTator file, or JSON lines {"id", "text", "spans": [[start, end]]}')
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one mention a line")
    p.add_argument("--model", type=Path, help="exported cross-encoder (default: <paths.runs>/model)")
    p.add_argument("--calibration", type=Path,
                   help=f"calibration.json from evaluate (default: <paths.results>/{VARIANT}/calibration.json)")
    p.add_argument("--top", type=int, default=5, help="candidates per mention in the output")
    add_config_args(p)

    p = commands.add_parser("smoke", help="the whole pipeline on synthetic data in --out (CPU, minutes)")
    p.add_argument("--out", type=Path, default=Path("smoke-out"), help="working directory for every output")
    add_config_args(p)

    p = commands.add_parser("bench", help="scoring and mining throughput ratios, as JSON")
    p.add_argument("--out", type=Path, default=Path("bench/cross_encoder.json"))
    p.add_argument("--pairs", type=int, default=2000, help="pairs scored per timing")
    add_config_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(CrossEncoderConfig, args, CONFIG_DIR)
    runs, results = Path(cfg.paths.runs), Path(cfg.paths.results) / VARIANT

    if args.command == "prepare":
        from experiments.cross_encoder.prepare import prepare

        prepare(cfg)
    elif args.command == "index":
        from experiments.cross_encoder.retrieval import index_concepts

        index_concepts(cfg)
    elif args.command == "mine":
        from experiments.cross_encoder.mining import mine

        mine(cfg)
    elif args.command == "train":
        from experiments.cross_encoder.train import train

        train(cfg, args.out or runs, args.resume)
    elif args.command == "evaluate":
        from experiments.cross_encoder.evaluate import evaluate

        evaluate(cfg, args.run or runs, args.out or results)
    elif args.command == "link":
        from experiments.cross_encoder.link import link
        from experiments.cross_encoder.train import EXPORT_DIR

        link(cfg, args.input, args.out, args.model or runs / EXPORT_DIR,
             args.calibration or results / "calibration.json", args.top)
    elif args.command == "smoke":
        smoke(cfg, args.out)
    elif args.command == "bench":
        from experiments.cross_encoder.bench import run_benchmarks

        run_benchmarks(cfg, args.out, args.pairs)
    return 0


def smoke(cfg: CrossEncoderConfig, out: Path) -> None:
    """prepare → index → mine → train → evaluate → report, everything under `out`."""
    from experiments.cross_encoder.evaluate import evaluate
    from experiments.cross_encoder.mining import mine
    from experiments.cross_encoder.prepare import prepare
    from experiments.cross_encoder.retrieval import index_concepts
    from experiments.cross_encoder.train import train
    from medrepro import checkpoint, report

    out.mkdir(parents=True, exist_ok=True)
    # Every path in the config is relative, so running from `out` keeps all outputs there.
    os.chdir(out)
    t0 = time.perf_counter()
    prepare(cfg)
    index_concepts(cfg)
    mine(cfg)
    runs = Path(cfg.paths.runs)
    train(cfg, runs, resume="latest" if checkpoint.step_checkpoints(runs / "checkpoints") else None)
    m = evaluate(cfg, runs, Path(cfg.paths.results) / VARIANT)
    print(f"cross_encoder: test pair F1 {m['f1']:.3f} (positive rate {m['positive_rate']:.3f}), ECE {m['ece']:.3f}; "
          f"linking acc@1 {m['linking/acc_at_1']:.3f} vs bi-encoder {m['linking/biencoder_acc_at_1']:.3f}")
    report.write_report(Path(cfg.paths.results).parent)
    print(f"smoke finished in {time.perf_counter() - t0:.0f}s; results in {out.resolve() / cfg.paths.results}",
          file=sys.stderr)
