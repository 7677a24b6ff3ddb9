"""`medrepro <experiment> <command> ...` and `medrepro report`.

Each experiment package has a `cli.main(argv)`; this dispatcher imports only the one asked for, so
`medrepro retclip --help` does not pay for the other experiments' imports. Errors in the user's
input (`MedreproError`) become one line on stderr and exit status 2.
"""

import importlib
import sys
from collections.abc import Sequence

from medrepro.errors import MedreproError

EXPERIMENTS = {
    "retclip": "experiments.retclip.cli",
    "cross_encoder": "experiments.cross_encoder.cli",
}
USAGE = f"""usage: medrepro <experiment> <command> [options] [key.sub=value ...]
       medrepro report [--results DIR]
       medrepro images {{wheelhouse,build,run,smoke,id}} ...

experiments: {", ".join(EXPERIMENTS)}
Run `medrepro <experiment> --help` for its commands."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    try:
        if name == "report":
            from medrepro import report

            return report.main(rest)
        if name == "images":
            from medrepro import images

            return images.main(rest)
        if name not in EXPERIMENTS:
            print(f"medrepro: error: unknown experiment {name!r}\n{USAGE}", file=sys.stderr)
            return 2
        return importlib.import_module(EXPERIMENTS[name]).main(rest)
    except MedreproError as e:
        print(f"medrepro: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
