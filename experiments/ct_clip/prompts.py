"""The zero-shot prompt pair of each label (its own module: `prepare` builds the tiny tokenizer's
vocabulary from them without importing the model)."""

from experiments.ct_clip.ctrate import LABELS


def prompts() -> list[tuple[str, str]]:
    """("{label} is present.", "{label} is not present.") for each of the 18 labels, in label order."""
    return [(f"{label} is present.", f"{label} is not present.") for label in LABELS]
