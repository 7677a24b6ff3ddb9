"""What every `export` command shares: a model directory written atomically and readable by others.

Each experiment exports into its ecosystem's own format (open_clip, transformers,
sentence-transformers); this module holds only the parts that do not depend on the format.
"""

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medrepro import atomic
from medrepro.rundir import RunDir


@contextmanager
def model_dir(directory: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `directory` atomically when the block succeeds.

    Every file in it is made readable by the group and others on the way out: safetensors writes its
    files 0600, and a model directory on a shared cluster is read by other accounts.
    """
    with atomic.atomic_dir(directory) as tmp:
        yield tmp
        for path in tmp.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


def refuse_unfinished(run: RunDir, args: argparse.Namespace, experiment: str) -> None:
    """As evaluate does: `--checkpoint best` only of a finished run of `--variant`; one line otherwise,
    naming the command that finishes it."""
    if args.checkpoint != "best":
        return
    out = f" --out {args.run}" if args.run else ""
    run.completion(args.variant, f"finish it with `medrepro {experiment} train --variant {args.variant}{out} "
                   "--resume latest`, or export one of its checkpoints with --checkpoint PATH (or final)")
