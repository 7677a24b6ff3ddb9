"""`medrepro <experiment> dryrun`: the full profile at real size on a few generated samples.

The experiment's `dryrun` module declares what differs from `configs/full.yaml`, and nothing else may:

    OVERRIDES                       data source and size, step counts (key.sub=value, over full.yaml)
    model_overrides(cfg, models)    hub ids → a local directory: the published weights when this machine
                                    has them, else the published architecture with random weights
    probes(cfg, full, workdir)      every model the full profile trains, built as `train` builds it from
                                    the dry run's config `cfg` (`medrepro.dryrun.Probe`); `full` is the
                                    full profile as written, for its per-device batch

Then, in `--out`:
1. every probe: parameters against `reference.yaml`'s `parameters`, one forward and backward at batch 1
   and 2 (`--quick`: batch 1 only), saved activation bytes, time, and the per-device memory projection;
2. unless `--quick`: the experiment's pipeline, each stage in its own process as DVC runs it
   (prepare → train with its validations and checkpoints → train `--resume latest` → evaluate);
3. `dryrun.json` and the report on stdout.
"""

import argparse
import gc
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from medrepro import atomic, config, preflight, runtime
from medrepro.errors import ConfigError, MedreproError
from medrepro.suite import registry
from medrepro.suite.pipeline import pipeline_commands
from medrepro.suite.spec import Experiment


def add_arguments(parser: argparse.ArgumentParser, experiment: Experiment) -> None:
    parser.add_argument("--out", type=Path, default=Path("dryrun-out") / experiment.name,
                        help="directory for every output (default: dryrun-out/<experiment>)")
    parser.add_argument("--quick", action="store_true",
                        help="build every model at full size and run one forward and backward at batch 1; "
                             "no pipeline stages")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="further overrides over configs/full.yaml (e.g. to try another batch size)")


def run(experiment: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    # Offline unless the caller says otherwise: weights come from this machine or are made up, and a
    # library must not wait on the network first (the stages inherit it).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = _plan(experiment)
    full = registry.experiments_dir() / experiment.name / "configs" / "full.yaml"
    out = args.out.resolve()
    overrides = [*plan.OVERRIDES, *args.overrides]
    full_cfg = _load(experiment, full, args.overrides)
    cfg = _load(experiment, full, overrides)
    preflight.output_dir(out, "--out")
    runtime.pin(cfg.runtime)
    import transformers

    # Loading a stand-in into a tower reports the keys it leaves out (the pooler) and the published
    # model type, saving one draws progress bars; the dry run says what it loaded itself, on stdout,
    # so that a mistake is the one line on stderr.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    model_overrides, sources = plan.model_overrides(cfg, out / "models")
    for key, source in sources.items():
        print(f"dryrun: {key}: {source}", flush=True)
    overrides += model_overrides
    cfg = _load(experiment, full, overrides)

    reference = _parameter_references(experiment)
    readme = (registry.experiments_dir() / experiment.name / "README.md").read_text()
    measurements, checks = _measure(plan, cfg, full_cfg, out, (1,) if args.quick else (1, 2), reference, readme)
    stages = [] if args.quick else _stages(experiment, full, overrides, out)
    report = {"experiment": experiment.name, "quick": args.quick, "overrides": overrides,
              "models": sources, "parameters": checks, "measurements": measurements, "stages": stages,
              "seconds": time.perf_counter() - t0}
    atomic.write_json(out / "dryrun.json", report)
    from medrepro.dryrun import table

    print(f"## {experiment.name} dry run ({'quick: batch 1, no stages' if args.quick else 'full'})\n")
    print(table(measurements, checks))
    if stages:
        print("\n" + " → ".join(f"{s['command']} {s['seconds']:.0f}s" for s in stages))
    print(f"\ndryrun: {experiment.name} passed in {report['seconds']:.0f}s; report in {out / 'dryrun.json'}")
    return report


def _plan(experiment: Experiment) -> ModuleType:
    if not experiment.dryrun:
        raise MedreproError(f"{experiment.name} declares no dry run (Experiment.dryrun in its experiment.py)")
    import importlib

    return importlib.import_module(experiment.dryrun)


def _load(experiment: Experiment, full: Path, overrides: list[str]) -> Any:
    try:
        return config.load_config(experiment.config_class(), full, overrides)
    except ConfigError as e:
        raise ConfigError(f"the full profile no longer loads with the dry run's overrides: {e}", e.key) from None


def _parameter_references(experiment: Experiment) -> dict[str, Any]:
    path = registry.experiments_dir() / experiment.name / "reference.yaml"
    return yaml.safe_load(path.read_text()).get("parameters", {})


def _measure(plan: ModuleType, cfg: Any, full_cfg: Any, out: Path, batch_sizes: tuple[int, ...],
             reference: dict[str, Any], readme: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from medrepro.dryrun import check_reference, measure, parameters

    measurements, checks = [], []
    for probe in plan.probes(cfg, full_cfg, out):
        counts = {probe.name: probe.model, **probe.parts}
        checks += [check_reference(name, parameters(module)[0], reference.get(name), readme)
                   for name, module in counts.items()]
        print(f"dryrun: {probe.name}: {checks[-len(counts)]['count']:,} parameters; one step at batch "
              f"{', '.join(map(str, batch_sizes))}", flush=True)
        measurements.append(measure(probe, batch_sizes))
        del probe
        gc.collect()  # one real-size model in memory at a time
    return measurements, checks


def _stages(experiment: Experiment, full: Path, overrides: list[str], out: Path) -> list[dict[str, Any]]:
    commands = pipeline_commands(experiment, list(experiment.variants))
    first_train = next(i for i, argv in enumerate(commands) if argv[0] == "train")
    commands.insert(first_train + 1, [*commands[first_train], "--resume", "latest"])
    done = []
    for argv in commands:
        command = [experiment.name, *argv, "--config", str(full), *overrides]
        print(f"dryrun: medrepro {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        # The stand-ins carry a pooler the towers leave out; transformers' report of it is expected here.
        code = subprocess.run([sys.executable, "-m", "medrepro", *command], cwd=out,
                              env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"}).returncode
        if code != 0:
            raise MedreproError(f"dry run of {experiment.name}: `medrepro {' '.join(argv)}` failed with exit status "
                                f"{code} (in {out}); the full profile would fail there too")
        # The exact command, to rerun one stage by hand from `out`.
        done.append({"command": " ".join(argv), "seconds": time.perf_counter() - t0,
                     "argv": shlex.join(["medrepro", *command])})
    return done

