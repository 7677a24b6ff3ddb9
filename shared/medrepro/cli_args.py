"""Argument helpers every experiment's command line shares: profiles, config files, overrides."""

import argparse
from pathlib import Path
from typing import TypeVar

from medrepro.config import load_config

T = TypeVar("T")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", default="smoke", help="configs/<profile>.yaml of the experiment (default: smoke)")
    group.add_argument("--config", type=Path, help="a config file instead of a profile")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def resolve_config(cls: type[T], args: argparse.Namespace, config_dir: Path, extra: list[str] | None = None) -> T:
    path = args.config or config_dir / f"{args.profile}.yaml"
    return load_config(cls, path, [*(extra or []), *args.overrides])
