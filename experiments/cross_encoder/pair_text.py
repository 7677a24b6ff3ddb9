"""What the cross-encoder reads: the mention in its context, and a candidate name with its semantic types.

A name alone cannot settle an ambiguous mention: "RI" is renal insufficiency in "patients with RI"
and renal imaging in "RI was performed"; UMLS gives many strings to concepts of different types.
So the first segment is the mention marked in the words around it, as BLINK-style re-rankers read
it, and the second the candidate's name followed by its semantic type names:

    first:  "the records of 40 patients with [ RI ] ."
    second: "renal imaging ( Therapeutic or Preventive Procedure )"

Training pairs, evaluation, `link` and the exported model all build the segments here, so the
model is always shown the text it was trained on (the export's README states the format).
"""

import re
from collections.abc import Sequence

from experiments.cross_encoder.records import Pair

_WORD = re.compile(r"\S+")


def context(document: str, start: int, end: int, words: int) -> tuple[str, str]:
    """Up to `words` whitespace-separated words of `document` left and right of the span [start, end)."""
    if words <= 0:
        return "", ""
    left = _WORD.findall(document[:start])[-words:]
    right = _WORD.findall(document[end:])[:words]
    return " ".join(left), " ".join(right)


def mention_input(text: str, left: str, right: str) -> str:
    """The first segment: the mention in brackets between its left and right context."""
    return " ".join(part for part in (left, f"[ {text} ]", right) if part)


def candidate_input(name: str, type_names: Sequence[str]) -> str:
    """The second segment: the name, then its semantic types in parentheses (none: the name alone)."""
    return f"{name} ( {' ; '.join(type_names)} )" if type_names else name


def segments(pair: Pair) -> tuple[str, str]:
    """The cross-encoder's two segments of a mined pair."""
    return mention_input(pair.text, pair.left, pair.right), candidate_input(pair.name, pair.types)
