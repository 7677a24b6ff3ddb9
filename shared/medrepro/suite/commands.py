"""The command line of one experiment, built from its declaration (see `medrepro.suite.cli`)."""

import argparse
import copy
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import yaml

from medrepro import atomic, config, preflight, run_guard, runtime
from medrepro.config_sections import TrackingConfig
from medrepro.errors import DataError
from medrepro.results import PUBLISHED
from medrepro.rundir import RunDir
from medrepro.suite import registry
from medrepro.suite.spec import Command, Experiment, resolve


def add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", default="smoke", choices=("smoke", "full"),
                       help="configs/<profile>.yaml of the experiment (default: smoke)")
    group.add_argument("--config", type=Path, help="a config file instead of a profile")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _add_variant(parser: argparse.ArgumentParser, experiment: Experiment, required: bool = True) -> None:
    only = experiment.variants[0] if len(experiment.variants) == 1 else None
    parser.add_argument("--variant", choices=experiment.variants, required=required and only is None, default=only,
                        help="which variant" + (f" (default: {only})" if only else ""))


def _add_command(commands: argparse._SubParsersAction, command: Command) -> None:
    p = commands.add_parser(command.name, help=command.help)
    if command.arguments is not None:
        command.arguments(p)
    add_config_args(p)


def build_parser(experiment: Experiment) -> argparse.ArgumentParser:
    name = experiment.name
    parser = argparse.ArgumentParser(prog=f"medrepro {name}", description=experiment.summary)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for stage in experiment.stages:
        _add_command(commands, stage)

    p = commands.add_parser("train", help=f"train one variant into <paths.runs>/<variant> (runs/{name}/...)")
    _add_variant(p, experiment)
    p.add_argument("--out", type=Path, help="run directory (default: <paths.runs>/<variant>)")
    p.add_argument("--resume", help="`latest` or a checkpoint path")
    add_config_args(p)

    p = commands.add_parser("evaluate", help=f"test metrics, intervals and plots into results/{name}/<variant>")
    _add_variant(p, experiment, required=not experiment.evaluate_published)
    p.add_argument("--run", type=Path, help="run directory (default: <paths.runs>/<variant>)")
    p.add_argument("--out", type=Path, help="results directory (default: <paths.results>/<variant>, "
                   f"<paths.results>/{PUBLISHED} with --weights)")
    p.add_argument("--checkpoint", default="best", help="`best` (of a finished run), `final` or a checkpoint path")
    if experiment.evaluate_published:
        p.add_argument("--weights", type=Path, help="the authors' released model (its file or directory, or a "
                       "hub id already in the local Hugging Face cache; read offline) instead of a trained run; see "
                       "the experiment README for where to get it")
    add_config_args(p)

    for command in experiment.commands:
        _add_command(commands, command)

    p = commands.add_parser("smoke", help="the whole pipeline on synthetic data in --out (CPU, minutes)")
    p.add_argument("--out", type=Path, default=Path("smoke-out") / name, help="directory for every output")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(experiment.variants)}")
    add_config_args(p)

    if experiment.dryrun:
        from medrepro.suite import dryrun

        p = commands.add_parser("dryrun", help="the full profile's real-size models on a few generated samples: "
                                "parameters, memory, time per step, then every stage (CPU)")
        dryrun.add_arguments(p, experiment)

    p = commands.add_parser("bench", help="throughput ratios against same-process references, as JSON")
    p.add_argument("--out", type=Path, default=Path("bench") / f"{name}.json")
    add_config_args(p)

    p = commands.add_parser("config", help="print the resolved config (profile, file and overrides); run nothing")
    add_config_args(p)
    for p in commands.choices.values():
        p.add_argument("--verbose", action="store_true",
                       help="the libraries' own output too: load reports, progress bars, open_clip_train's log "
                            "(also MEDREPRO_VERBOSE=1, which the commands a command starts inherit)")
    return parser


def run(experiment: Experiment, argv: Sequence[str]) -> int:
    parser = build_parser(experiment)
    args = parser.parse_args(argv)
    if args.command == "evaluate" and args.variant is None and getattr(args, "weights", None) is None:
        parser.error("evaluate needs --variant (a trained run) or --weights (the released model)")
    runtime.set_verbose(args.verbose or runtime.verbose())
    if args.command == "dryrun":  # always the full profile, with the dry run's own overrides
        from medrepro.suite import dryrun

        dryrun.run(experiment, args)
        return 0
    path = args.config or registry.experiments_dir() / experiment.name / "configs" / f"{args.profile}.yaml"
    cfg = config.load_config(experiment.config_class(), path, args.overrides)
    runtime.pin(cfg.runtime)
    if args.command == "config":
        print(yaml.safe_dump(config.to_plain(cfg), sort_keys=False), end="")
        return 0
    _preflight(experiment, cfg, args)
    runtime.pin_torch()

    if args.command == "smoke":
        from medrepro.suite import smoke

        variants = args.variants.split(",") if args.variants else list(experiment.variants)
        smoke.run(experiment, cfg, args.out, variants, args)
    elif args.command == "train":
        resolve(experiment.train)(cfg, args.variant, RunDir(args.out or Path(cfg.paths.runs) / args.variant),
                                  args.resume)
    elif args.command == "evaluate":
        _evaluate(experiment, cfg, args)
    elif args.command == "bench":
        _bench(experiment, cfg, args.out)
    else:
        command = _command(experiment, args.command)
        # A data stage replaces its outputs as a whole; one writer at a time. A stage that trains under a
        # launcher (a pretraining stage) is one writer: its main process holds the lock for all.
        keys = getattr(command, "outs", ()) if runtime.launched_as_main() else ()
        outs = [Path(config.lookup(cfg, key)) for key in keys]
        with ExitStack() as held:
            for out in outs:
                held.enter_context(run_guard.exclusive_output(out))
                atomic.clean_orphans(out.parent, out.name)  # what a killed run of this stage left
            resolve(command.run)(cfg, args)
    return 0


def _command(experiment: Experiment, name: str) -> Command:
    return next(c for c in (*experiment.stages, *experiment.commands) if c.name == name)


def _preflight(experiment: Experiment, cfg: object, args: argparse.Namespace) -> None:
    """Before torch loads: every output writable and not a file where a directory goes, a run directory
    not in use, a run to evaluate finished, then every input present: a data stage's own, and for
    training and evaluation every stage's output (as the DVC pipeline has it; `evaluate --weights` those
    the experiment names in `published_reads`, if it does)."""
    producers = {key: stage.name for stage in experiment.stages for key in stage.outs}
    reads: tuple[str, ...] = ()
    if args.command == "train":
        run_dir = args.out or Path(cfg.paths.runs) / args.variant
        preflight.output_dir(run_dir, "--out" if args.out else "paths.runs")
        run_guard.ensure_free(run_dir)
        reads = tuple(producers)
    elif args.command == "evaluate" and getattr(args, "weights", None) is not None:
        preflight.output_dir(args.out or Path(cfg.paths.results) / PUBLISHED, "--out" if args.out else "paths.results")
        # Resolved once, here, so that evaluation and the recorded source name the same files.
        args.weights = released_source(args.weights, experiment.name)
        reads = experiment.published_reads or tuple(producers)
    elif args.command == "evaluate":
        preflight.output_dir(args.out or Path(cfg.paths.results) / args.variant,
                             "--out" if args.out else "paths.results")
        if args.checkpoint == "best":
            run = RunDir(args.run or Path(cfg.paths.runs) / args.variant)
            out = f" --out {args.run}" if args.run else ""
            run.completion(args.variant, f"finish it with `medrepro {experiment.name} train --variant "
                                f"{args.variant}{out} --resume latest`, or evaluate one of its checkpoints with "
                                "--checkpoint PATH")
        reads = tuple(producers)
    elif args.command == "smoke":
        preflight.output_dir(args.out, "--out")
    elif args.command == "bench":
        preflight.output_file(args.out, "--out")
    else:
        command = _command(experiment, args.command)
        for key in getattr(command, "outs", ()):
            preflight.output_dir(config.lookup(cfg, key), key, replaced=True)
        for dest, kind in command.writes.items():
            if getattr(args, dest) is not None:
                check = preflight.output_dir if kind == "dir" else preflight.output_file
                check(getattr(args, dest), "--" + dest.replace("_", "-"))
        reads = getattr(command, "deps", ())
    for key in reads:
        preflight.input_path(config.lookup(cfg, key), key, f"medrepro {experiment.name} {producers[key]}")


def released_source(weights: Path, experiment: str) -> Path:
    """`--weights`' file or directory: the path itself, or for a hub id (`org/name`) that is not a path here,
    its snapshot in the local Hugging Face cache (read offline, never downloaded)."""
    from medrepro import hub

    if weights.exists():
        return weights
    cached = hub.cached_snapshot(str(weights)) if len(weights.parts) == 2 and not weights.is_absolute() else None
    if cached is not None:
        return cached
    raise DataError(f"{weights} (--weights) not found: the released model's file or directory, or a hub id "
                    f"in the local Hugging Face cache; experiments/{experiment}/README.md says where to get it")


def _evaluate(experiment: Experiment, cfg: object, args: argparse.Namespace) -> None:
    from medrepro import results

    if getattr(args, "weights", None) is not None:
        _evaluate_published(experiment, cfg, args)
        return
    run = RunDir(args.run or Path(cfg.paths.runs) / args.variant)
    out = args.out or Path(cfg.paths.results) / args.variant
    # The best checkpoint only of a finished run of this variant (checked by _preflight); a named
    # checkpoint is the user's call, and the results say so.
    complete = args.checkpoint == "best"
    with run_guard.exclusive_output(out):
        evaluation = resolve(experiment.evaluate)(cfg, args.variant, run, out, args.checkpoint)
        evaluation.info["run"] = {"complete": complete, "checkpoint": args.checkpoint}
        results.write_evaluation(out, evaluation, run)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in evaluation.headline.items())
    print(f"{experiment.name} {args.variant}: {shown}\nresults in {out}/ (metrics.json, details.json, plots/)")
    _log_test_metrics(experiment, cfg, args.variant, run, evaluation)
    if not complete:
        print(f"note: evaluated the named checkpoint {args.checkpoint}, not a finished run's best; "
              "`medrepro report` leaves these results out")


def _evaluate_published(experiment: Experiment, cfg: object, args: argparse.Namespace) -> None:
    """`evaluate --weights`: the released model through the experiment's own evaluation, its results labelled
    `weights: published` with the file's path and checksum, for the report's `published` row."""
    from medrepro import repro, results

    out = args.out or Path(cfg.paths.results) / PUBLISHED
    weights = args.weights.resolve()
    files = sorted(p for p in weights.rglob("*") if p.is_file()) if weights.is_dir() else [weights]
    with run_guard.exclusive_output(out):
        evaluation = resolve(experiment.evaluate_published)(cfg, weights, out)
        evaluation.info.update(weights=PUBLISHED, source={"path": str(weights), "sha256": {
            str(p.relative_to(weights)) if weights.is_dir() else p.name: repro.sha256_file(p) for p in files}})
        results.write_evaluation(out, evaluation, None)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in evaluation.headline.items())
    print(f"{experiment.name} {PUBLISHED} ({weights}): {shown}\nresults in {out}/ (metrics.json, details.json, "
          "plots/)")


def _log_test_metrics(experiment: Experiment, cfg: object, variant: str, run: RunDir, evaluation: object) -> None:
    """The headline as test/<name> into the trackers each run of the loop opened (the run directory, or
    each of its parts: one per seed), at that run's last step, when asked."""
    import json

    from medrepro import tracking

    # An experiment whose training is not the shared loop's (its own train section) has no such trackers.
    tracking_cfg = getattr(getattr(cfg, "train", None), "tracking", None)
    if not isinstance(tracking_cfg, TrackingConfig) or not tracking_cfg.test_metrics:
        return
    for trained in (run, *run.parts()):
        if not trained.tracking_file.is_file():
            continue
        step = json.loads(trained.fit_file.read_text())["state"]["step"] if trained.fit_file.is_file() else 0
        written = tracking.log_test_metrics(trained.path, tracking_cfg, f"{experiment.name}-{variant}",
                                            evaluation.headline, step)
        if written:
            print(f"test metrics logged to {', '.join(written)} of {trained} at step {step}")


def _bench(experiment: Experiment, cfg: object, out: Path) -> None:
    import json

    from medrepro import repro

    with tempfile.TemporaryDirectory(prefix=f"{experiment.name}-bench-") as tmp:
        # A copy: a benchmark may shorten training or redirect outputs without touching the caller's config.
        result = resolve(experiment.bench)(copy.deepcopy(cfg), Path(tmp))
    # One shape for every experiment: what was measured, the rates, and the ratios with their goals; a
    # ratio measured in interleaved rounds has its median, min and max under `spread`.
    if (not {"setting", "rates", "ratios", "goals"} <= set(result) <= {"setting", "rates", "ratios", "goals", "spread"}
            or not set(result["goals"]) | set(result.get("spread", {})) <= set(result["ratios"])):
        raise ValueError(f"{experiment.bench} must return setting, rates, ratios, goals (a subset of ratios) and "
                         f"optionally spread (a subset of ratios); got {sorted(result)}")
    env = repro.environment()
    result["environment"] = {k: env[k] for k in ("packages", "cpu_count", "gpus", "runtime")}
    atomic.write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))
    print(f"wrote {out}")
