"""`medrepro <experiment> <command> ...` and the suite's own tools.

Every experiment gets the same commands from its declaration (`experiments/<name>/experiment.py`):

    prepare, <its other data stages>   raw data (or the synthetic twin) → data/<name>/...
    train     --variant V              → runs/<name>/<V>/
    evaluate  --variant V              → results/<name>/<V>/ (metrics.json last)
    smoke                              the pipeline on synthetic data into one directory
    bench                              throughput ratios against same-process references
    config                             the resolved config, printed, nothing run
plus the experiment's own commands. A command loads and checks its config, pins the runtime
(threads, CPU kernels) and only then imports torch, so a mistake is reported in about a second. It
prints its own progress and summaries and the libraries' warnings; `--verbose` adds the libraries'
own output (load reports, progress bars, open_clip_train's log).
Errors in the user's input (`MedreproError`) become one line on stderr and exit status 2.
"""

import errno
import sys
from collections.abc import Sequence

from medrepro.errors import MedreproError
from medrepro.suite import registry
from medrepro.suite.commands import run
from medrepro.suite.spec import resolve

TOOLS = {
    "report": "results/RESULTS.md from every experiment's results",
    "images": "build and run the experiment images",
    "pipeline": "write dvc.yaml from the experiments' declarations",
    "verify": "re-run the smoke pipeline in a scratch copy and compare it with the committed metrics",
}


def usage() -> str:
    lines = ["usage: medrepro <experiment> <command> [options] [key.sub=value ...]",
             "       medrepro <tool> ...", "", "experiments:"]
    lines += [f"  {e.name:16} {e.summary}" for e in registry.all_experiments()]
    lines += ["", "tools:", *(f"  {name:16} {text}" for name, text in TOOLS.items()), "",
              "Run `medrepro <experiment> --help` for its commands."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(usage())
            return 0
        name, rest = argv[0], argv[1:]
        if name in TOOLS:
            return resolve(f"medrepro.suite.{name}:main")(rest)
        if name not in registry.names():
            print(f"medrepro: error: unknown experiment {name!r}\n{usage()}", file=sys.stderr)
            return 2
        return run(registry.get(name), rest)
    except MedreproError as e:
        print(f"medrepro: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"medrepro: error: no space left on the device holding {e.filename or 'an output'}: free space "
              "there or point the config's paths elsewhere", file=sys.stderr)
        return 2
