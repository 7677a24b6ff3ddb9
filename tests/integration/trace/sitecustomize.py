"""Loaded at start-up by every Python process when this directory is on PYTHONPATH (the stage-dependency
test puts it there): a `medrepro` process records the files it opens and the modules it imported, one
JSON line per process in $MEDREPRO_TRACE_DIR, so the test can hold them against the stage's DVC deps."""

import atexit
import json
import os
import sys

_DIR = os.environ.get("MEDREPRO_TRACE_DIR")
_ARGV = list(sys.orig_argv)
# `python -m medrepro ...` or the `medrepro` console script (what DVC stages call).
_IS_MEDREPRO = any(a == "medrepro" or a.endswith("/medrepro") for a in _ARGV[:3])

if _DIR and _IS_MEDREPRO:
    _opened: dict[str, str] = {}

    def _hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str):
            mode = args[1] if isinstance(args[1], str) else ("w" if isinstance(args[2], int) and args[2] & 0o3 else "r")
            previous = _opened.get(args[0], "")
            _opened[args[0]] = previous if "w" in previous else mode

    def _write() -> None:
        modules = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})
        record = {"argv": _ARGV, "cwd": os.getcwd(), "pid": os.getpid(), "opened": _opened, "modules": modules}
        with open(os.path.join(_DIR, f"{os.getpid()}.json"), "w") as f:
            json.dump(record, f)

    sys.addaudithook(_hook)
    atexit.register(_write)
