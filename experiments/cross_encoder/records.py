"""The records that pass between cross_encoder's stages, and the names of their splits and kinds.

A reader, a stage and the evaluation that share a record import it from here, which imports nothing
of the experiment: taking a record type never drags in the code that writes or reads it (the UMLS
loader, FAISS, torch).

    Mention, Document  a MedMentions PubTator document and its annotated spans (medmentions.py)
    Concept            a loaded UMLS concept (umls.py), one line of prepared/concepts.jsonl
    MentionRecord      one line of prepared/mentions.jsonl (prepare.py)
    Pair               one line of mined/pairs_<split>.jsonl (mining.py)
"""

import zlib
from dataclasses import dataclass

# The corpus splits, by document, and the pair splits: the dev documents are halved, `dev` picks the
# checkpoint and stops training, `calibration` (never seen by training) fits the probability scalers
# and the retrieval weight.
SPLITS = ("train", "dev", "test")
PAIR_SPLITS = ("train", "dev", "calibration", "test")
# How a pair's concept was chosen (mining.py): the gold one, or a negative of one of three kinds.
KINDS = ("positive", "hard", "type", "random")


@dataclass(frozen=True)
class Mention:
    """One annotated span; `cui` carries no `UMLS:` prefix."""

    pmid: str
    start: int
    end: int
    text: str
    types: tuple[str, ...]
    cui: str


@dataclass(frozen=True)
class Document:
    pmid: str
    title: str
    abstract: str
    mentions: tuple[Mention, ...]

    @property
    def text(self) -> str:
        """The string the mention offsets index into."""
        return f"{self.title} {self.abstract}"


@dataclass(frozen=True)
class Concept:
    """One concept: `names` are its distinct kept English strings, the preferred one first."""

    cui: str
    preferred: str
    names: tuple[str, ...]
    types: tuple[str, ...]  # TUIs, in MRSTY order


@dataclass(frozen=True)
class MentionRecord:
    split: str
    pmid: str
    start: int
    end: int
    text: str
    types: tuple[str, ...]
    cui: str
    gold: str | None
    left: str  # up to data.context_words words of the document before the mention...
    right: str  # ...and after it, which the cross-encoder reads with it (pair_text.py)


@dataclass(frozen=True)
class Pair:
    mention: int  # index into mentions.jsonl
    text: str
    name: str
    cui: str
    label: int
    kind: str
    left: str  # the mention's context (prepare)
    right: str
    types: list[str]  # the semantic type names of the concept `name` belongs to


def pair_split(mention: MentionRecord) -> str:
    """The mention's split for pairs: its corpus split, with dev documents halved by a hash of the PMID
    (whole documents, so the halves share no abstract)."""
    if mention.split == "dev" and zlib.crc32(mention.pmid.encode()) % 2:
        return "calibration"
    return mention.split
