"""Versioned prompt templates: the training report of a patient and the zero-shot class prompts.

The texts live in prompts.yaml so that a change is a reviewed, versioned edit rather than a code
change; results should record `Prompts.version`.
"""

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.retclip.odir import CLASSES
from medrepro.errors import DataError

DEFAULT_PATH = Path(__file__).with_name("prompts.yaml")
_KEYS = ("version", "report", "joiner", "no_keyword", "templates", "names")
# Optional: the words that fill {side} and {Side} for each eye (default "left" / "Left", "right" / "Right"),
# for prompts in a language whose word for the eye's side is not the English one.
_OPTIONAL = ("sides",)
SIDES = ("left", "right")


@dataclass(frozen=True)
class Prompts:
    version: int
    report: str  # with {left} and {right}
    joiner: str
    no_keyword: str
    templates: tuple[str, ...]  # each with {name}, optionally {side} ("left") or {Side} ("Left")
    names: dict[str, tuple[str, ...]]  # class → canonical keyword phrases, every class of CLASSES
    sides: dict[str, str]  # "left" / "right" → the word {side} stands for ({Side}: capitalised)


def load_prompts(path: Path | None = None) -> Prompts:
    """Load and check prompt templates (default: prompts.yaml beside this module)."""
    path = DEFAULT_PATH if path is None else Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DataError(f"cannot read prompts file {path}: {error}; fix or restore it") from error
    if not isinstance(raw, dict):
        raise DataError(f"prompts file {path} must be a mapping with the keys {', '.join(_KEYS)}")
    for key in _KEYS:
        if key not in raw:
            raise DataError(f"prompts file {path} lacks the key '{key}'; add it (keys: {', '.join(_KEYS)})")
    unknown = sorted(set(raw) - set(_KEYS) - set(_OPTIONAL))
    if unknown:
        raise DataError(f"prompts file {path} has the unknown key '{unknown[0]}'; remove or rename it")
    if not isinstance(raw["version"], int) or isinstance(raw["version"], bool):
        raise DataError(f"key 'version' in prompts file {path} must be an integer, got {raw['version']!r}")
    report = _template(raw["report"], "report", path, required={"left", "right"}, allowed={"left", "right"})
    templates = raw["templates"]
    if not isinstance(templates, list) or not templates:
        raise DataError(f"key 'templates' in prompts file {path} must be a non-empty list of strings")
    names = raw["names"]
    if not isinstance(names, dict):
        raise DataError(f"key 'names' in prompts file {path} must map each class of {CLASSES} to phrases")
    for label in (*CLASSES, *names):
        if label not in CLASSES or label not in names:
            problem = "is not a class" if label not in CLASSES else "is missing"
            raise DataError(f"key 'names.{label}' in prompts file {path} {problem}; give one list per class {CLASSES}")
        phrases = names[label]
        if not isinstance(phrases, list) or not phrases or not all(_nonempty(phrase) for phrase in phrases):
            raise DataError(f"key 'names.{label}' in prompts file {path} must be a non-empty list of phrases")
    sides = raw.get("sides", {side: side for side in SIDES})
    if not (isinstance(sides, dict) and set(sides) == set(SIDES) and all(_nonempty(w) for w in sides.values())):
        raise DataError(f"key 'sides' in prompts file {path} must map left and right to a word each, got {sides!r}")
    return Prompts(
        version=raw["version"],
        report=report,
        joiner=_text(raw["joiner"], "joiner", path),
        no_keyword=_text(raw["no_keyword"], "no_keyword", path),
        templates=tuple(
            _template(template, f"templates[{i}]", path, required={"name"}, allowed={"side", "Side", "name"})
            for i, template in enumerate(templates)
        ),
        names={label: tuple(names[label]) for label in CLASSES},
        sides=dict(sides),
    )


def report_text(prompts: Prompts, left_keywords: tuple[str, ...], right_keywords: tuple[str, ...]) -> str:
    """A patient's training text from the cleaned keywords of both eyes."""
    return prompts.report.format(left=_eye_text(prompts, left_keywords), right=_eye_text(prompts, right_keywords))


def class_prompts(prompts: Prompts, side: str) -> list[list[str]]:
    """One list of prompts per class, in CLASSES order, for the eye on `side` ("left" or "right")."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    word = prompts.sides[side]
    return [
        [template.format(side=word, Side=word.capitalize(), name=name)
         for name in prompts.names[label] for template in prompts.templates]
        for label in CLASSES
    ]


def patient_prompts(prompts: Prompts) -> list[list[str]]:
    """One list of patient-level prompts per class, in CLASSES order: the report with both eyes
    showing the class (one prompt per canonical name)."""
    return [[report_text(prompts, (name,), (name,)) for name in prompts.names[label]] for label in CLASSES]


def _eye_text(prompts: Prompts, keywords: tuple[str, ...]) -> str:
    return prompts.joiner.join(keywords) if keywords else prompts.no_keyword


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _text(value: Any, key: str, path: Path) -> str:
    if not isinstance(value, str):
        raise DataError(f"key '{key}' in prompts file {path} must be a string, got {value!r}")
    return value


def _template(value: Any, key: str, path: Path, required: set[str], allowed: set[str]) -> str:
    if not _nonempty(value):
        raise DataError(f"key '{key}' in prompts file {path} must be a non-empty string, got {value!r}")
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
    except ValueError as error:
        raise DataError(f"key '{key}' in prompts file {path} is not a valid template: {error}") from error
    if not required <= fields <= allowed:
        raise DataError(
            f"key '{key}' in prompts file {path} uses the fields {sorted(fields)}; it must use "
            f"{sorted(required)} and may use only {sorted(allowed)}"
        )
    return value
