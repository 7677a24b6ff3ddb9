"""Reader for MedMentions in its PubTator release (the full corpus and the ST21pv subset alike).

A document is a block of lines ended by a blank line:

    PMID|t|title
    PMID|a|abstract
    PMID<TAB>start<TAB>end<TAB>mention text<TAB>semantic type ids<TAB>entity id

Offsets are 0-based and end-exclusive into `title + " " + abstract`; the type field may be a comma
list (`T047,T191`); the entity id is a CUI, written `C0012345` in the full corpus and `UMLS:C0012345`
in ST21pv. The official split is by document, in `corpus_pubtator_pmids_{trng,dev,test}.txt`, which
MedMentions ships in `full/data/` only. Every problem a user can fix raises `DataError`.
"""

import gzip
import logging
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from experiments.cross_encoder.layout import SPLIT_FILES
from experiments.cross_encoder.records import Document, Mention
from medrepro.errors import DataError

CUI_PREFIX = "UMLS:"

_GZIP_MAGIC = b"\x1f\x8b"
_TEXT_LINE = re.compile(r"([0-9]+)\|([ta])\|(.*)")
_PMID = re.compile(r"[0-9]+")
_OFFSET = re.compile(r"[0-9]+")
_CUI = re.compile(r"C[0-9]{7}")
_MENTION_FIELDS = 6

_log = logging.getLogger(__name__)


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield (line number from 1, line without its line ending) of a UTF-8 text file, plain or
    gzip-compressed (told by its first bytes, not its name).

    Only "\\n" ends a line: an abstract may hold other Unicode line separators, and splitting on them
    would shift every later offset. A trailing "\\r" (a file saved on Windows) is dropped.
    """
    path = Path(path)
    try:
        with path.open("rb") as probe:
            compressed = probe.read(2) == _GZIP_MAGIC
    except OSError as error:
        raise DataError(f"cannot open {path}: {error.strerror or error}; check the path") from error
    number = 0
    try:
        opener = gzip.open if compressed else open
        with opener(path, "rt", encoding="utf-8", newline="\n") as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line.removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not UTF-8 text (bad bytes after line {number}: {error.reason}); re-download the file"
        ) from error
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"cannot read {path} after line {number}: {error}; the file is truncated or corrupt, re-download it"
        ) from error


def read_pubtator(path: str | Path) -> Iterator[Document]:
    """Stream the documents of a PubTator file, holding one block (and the PMIDs seen) in memory.

    Checks every line: the title and abstract lines open each block, every mention belongs to its
    block's PMID, its offsets are in range and select exactly its mention text, its entity id is a CUI,
    and no PMID appears twice.
    """
    path = Path(path)
    seen: set[str] = set()
    block: _Block | None = None
    for number, line in text_lines(path):
        if not line.strip():
            if block is not None:
                yield block.document(seen)
                block = None
            continue
        if block is None:
            block = _Block(path, number)
        block.add(line, number)
    if block is not None:
        yield block.document(seen)


class _Block:
    """The lines of one document as they are read, checked line by line."""

    def __init__(self, path: Path, first_line: int) -> None:
        self.path = path
        self.first_line = first_line
        self.pmid: str | None = None
        self.title: str | None = None
        self.abstract: str | None = None
        self.text = ""
        self.mentions: list[Mention] = []

    def add(self, line: str, number: int) -> None:
        where = f"{self.path}:{number}"
        matched = _TEXT_LINE.fullmatch(line)
        if matched is None:
            self._add_mention(line, where)
            return
        pmid, kind, text = matched.groups()
        if kind == "t":
            if self.pmid is not None:
                raise DataError(
                    f"title line of PMID {pmid} at {where} is inside the block of PMID {self.pmid} that starts at "
                    f"line {self.first_line}; separate documents with a blank line"
                )
            self.pmid, self.title = pmid, text
            return
        if self.title is None or self.abstract is not None or self.mentions:
            what = "before any title line" if self.title is None else f"out of place in the block of PMID {self.pmid}"
            raise DataError(
                f"abstract line of PMID {pmid} at {where} is {what}; a block must start with `PMID|t|title` "
                "directly followed by `PMID|a|abstract`"
            )
        if pmid != self.pmid:
            raise DataError(
                f"abstract line at {where} names PMID {pmid} but follows the title of PMID {self.pmid}; "
                "fix the PMID or restore the missing lines"
            )
        self.abstract = text
        self.text = f"{self.title} {text}"

    def _add_mention(self, line: str, where: str) -> None:
        fields = line.split("\t")
        if len(fields) != _MENTION_FIELDS:
            raise DataError(
                f"line {where} has {len(fields)} tab-separated fields; expected `PMID|t|title`, `PMID|a|abstract` "
                f"or a mention line of {_MENTION_FIELDS} fields (PMID, start, end, mention text, semantic types, "
                "CUI): fix or remove the line"
            )
        pmid, start_field, end_field, mention, type_field, entity = fields
        if self.abstract is None:
            raise DataError(
                f"mention of PMID {pmid} at {where} comes in a block without a title or abstract line; every "
                "document needs `PMID|t|title` and `PMID|a|abstract` before its mentions"
            )
        if pmid != self.pmid:
            raise DataError(
                f"mention at {where} names PMID {pmid} inside the block of PMID {self.pmid}; fix the PMID or add "
                "the blank line and title/abstract lines that should come before it"
            )
        if not (_OFFSET.fullmatch(start_field) and _OFFSET.fullmatch(end_field)):
            raise DataError(
                f"offsets {start_field!r} and {end_field!r} of PMID {pmid} at {where} are not whole numbers; "
                "fix the line"
            )
        start, end = int(start_field), int(end_field)
        if not start < end <= len(self.text):
            raise DataError(
                f"offsets {start}-{end} of PMID {pmid} at {where} are outside its text of {len(self.text)} "
                "characters; offsets are 0-based, end-exclusive, into title + ' ' + abstract"
            )
        if self.text[start:end] != mention:
            raise DataError(
                f"mention of PMID {pmid} at {where} says {mention!r} but offsets {start}-{end} select "
                f"{self.text[start:end]!r}; offsets are 0-based, end-exclusive, into title + ' ' + abstract: "
                "fix the line or re-download the corpus"
            )
        cui = entity.removeprefix(CUI_PREFIX)
        if not _CUI.fullmatch(cui):
            raise DataError(
                f"entity id {entity!r} of PMID {pmid} at {where} is not a UMLS CUI (C and 7 digits, optionally "
                f"prefixed '{CUI_PREFIX}'); fix the line"
            )
        types = tuple(part for part in type_field.split(",") if part)
        self.mentions.append(Mention(pmid, start, end, mention, types, cui))

    def document(self, seen: set[str]) -> Document:
        """The finished document; `seen` holds the PMIDs of the blocks before it and gains this one."""
        where = f"{self.path}:{self.first_line}"
        if self.title is None or self.abstract is None or self.pmid is None:
            raise DataError(
                f"the block of PMID {self.pmid} starting at {where} has no abstract line; every document needs "
                "`PMID|t|title` followed by `PMID|a|abstract`"
            )
        if self.pmid in seen:
            raise DataError(
                f"PMID {self.pmid} appears a second time at {where}; each document must appear once: remove the "
                "duplicate block"
            )
        seen.add(self.pmid)
        return Document(self.pmid, self.title, self.abstract, tuple(self.mentions))


def read_split_pmids(directory: str | Path) -> dict[str, set[str]]:
    """Read the official split files in `directory` into {"train", "dev", "test"} → PMIDs."""
    directory = Path(directory)
    splits: dict[str, set[str]] = {}
    for split, name in SPLIT_FILES.items():
        path = directory / name
        if not path.is_file():
            raise DataError(
                f"split file {path} is missing; MedMentions ships {', '.join(SPLIT_FILES.values())} in "
                "full/data/ (the st21pv folder has none): set data.split_dir to the folder that holds them (it "
                "defaults to data.medmentions_dir)"
            )
        pmids: set[str] = set()
        for number, line in text_lines(path):
            pmid = line.strip()
            if not pmid:
                continue
            if not _PMID.fullmatch(pmid):
                raise DataError(f"line {path}:{number} holds {pmid!r}, not a PMID; a split file lists one PMID a line")
            pmids.add(pmid)
        splits[split] = pmids
    _split_lookup(splits)
    return splits


def split_documents(docs: Iterable[Document], pmids: Mapping[str, set[str]]) -> dict[str, list[Document]]:
    """Group documents (never single mentions) by split, keeping their order.

    A document in no split is left out; how many is logged as a warning (the official files cover the
    whole corpus, so any is a sign of a mismatched corpus and split). So are split PMIDs that name no
    document, which a truncated corpus would cause.
    """
    lookup = _split_lookup(pmids)
    grouped: dict[str, list[Document]] = {split: [] for split in pmids}
    unassigned: list[str] = []
    for doc in docs:
        split = lookup.pop(doc.pmid, None)
        if split is None:
            unassigned.append(doc.pmid)
        else:
            grouped[split].append(doc)
    if unassigned:
        _log.warning(
            "%d documents are in no split and are left out (first PMIDs: %s); use the split files of the same "
            "MedMentions release as the corpus",
            len(unassigned),
            ", ".join(unassigned[:5]),
        )
    if lookup:
        _log.warning(
            "%d split PMIDs name no document of the corpus (first: %s)", len(lookup), ", ".join(sorted(lookup)[:5])
        )
    return grouped


def _split_lookup(pmids: Mapping[str, set[str]]) -> dict[str, str]:
    """PMID → split name; overlapping splits would leak documents between training and evaluation."""
    lookup: dict[str, str] = {}
    for split, members in pmids.items():
        for pmid in sorted(members):
            other = lookup.setdefault(pmid, split)
            if other != split:
                shared = len(members & pmids[other])
                raise DataError(
                    f"PMID {pmid} is in both the {other} and the {split} split ({shared} shared PMIDs); the "
                    "splits must be disjoint: restore the official split files"
                )
    return lookup
