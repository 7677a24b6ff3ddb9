"""Streaming reader for the UMLS Metathesaurus RRF files that entity linking needs.

MRCONSO.RRF  CUI|LAT|TS|LUI|STT|SUI|ISPREF|AUI|SAUI|SCUI|SDUI|SAB|TTY|CODE|STR|SRL|SUPPRESS|CVF|
MRSTY.RRF    CUI|TUI|STN|STY|ATUI|CVF|
MRCUI.RRF    CUI1|VER|REL|RELA|MAPREASON|CUI2|MAPIN|   (concept history; optional)

The files are read line by line and only the kept English names are stored, so a caller that passes
`keep_cuis` (the CUIs of a corpus) loads a small slice of a multi-gigabyte release. UMLS is licensed
and never redistributed: tests use synthetic rows. Every problem a user can fix raises `DataError`.
"""

from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.cross_encoder.medmentions import text_lines
from experiments.cross_encoder.records import Concept, Mention
from medrepro.errors import DataError

MRCONSO_FIELDS: tuple[str, ...] = (
    "CUI", "LAT", "TS", "LUI", "STT", "SUI", "ISPREF", "AUI", "SAUI",
    "SCUI", "SDUI", "SAB", "TTY", "CODE", "STR", "SRL", "SUPPRESS", "CVF",
)  # fmt: skip
MRSTY_FIELDS: tuple[str, ...] = ("CUI", "TUI", "STN", "STY", "ATUI", "CVF")
MRCUI_FIELDS: tuple[str, ...] = ("CUI1", "VER", "REL", "RELA", "MAPREASON", "CUI2", "MAPIN")

ENGLISH = "ENG"
NOT_SUPPRESSED = "N"
SYNONYMOUS = "SY"  # MRCUI: the retired concept was merged into CUI2
DELETED = "DEL"  # MRCUI: the concept was removed without a successor

_CUI, _LAT, _TS, _STT, _ISPREF, _SAB, _STR, _SUPPRESS = (
    MRCONSO_FIELDS.index(name) for name in ("CUI", "LAT", "TS", "STT", "ISPREF", "SAB", "STR", "SUPPRESS")
)


@dataclass
class UmlsStats:
    """What the loader read and why it left rows out; each MRCONSO row counts under one reason."""

    atoms: int = 0
    kept_atoms: int = 0
    unwanted_cui_atoms: int = 0  # CUI not in keep_cuis (nor a successor of one)
    non_english_atoms: int = 0
    suppressed_atoms: int = 0
    other_source_atoms: int = 0  # SAB not in `sabs`
    duplicate_names: int = 0  # kept atoms whose string a concept already had, ignoring case
    preferred_fallbacks: int = 0  # concepts whose preferred name is their first kept atom
    untyped_concepts: int = 0  # loaded concepts without an MRSTY row
    history_rows: int = 0


@dataclass
class Umls:
    """A loaded slice of UMLS. `retired` maps each retired CUI to its single successor by MRCUI's
    REL=SY (which may itself be retired: `resolve_cui` follows the chain); `ambiguous` holds retired
    CUIs with several SY successors and `deleted` those with a DEL row. `related` holds retired CUIs
    whose only rows are RB, RN or RO (broader, narrower, other related): those are not merges, so the
    CUI resolves to nothing; the related concepts, as (REL, CUI2), are kept for the missing report."""

    concepts: dict[str, Concept]
    retired: dict[str, str]
    deleted: set[str]
    ambiguous: dict[str, tuple[str, ...]]
    type_names: dict[str, str]  # TUI → semantic type name
    stats: UmlsStats
    related: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)


def load_umls(
    directory: str | Path,
    sabs: Collection[str] | None = None,
    keep_suppressed: bool = False,
    keep_cuis: Iterable[str] | None = None,
) -> Umls:
    """Load English names, semantic types and concept history from `directory` (or its META folder),
    each file plain or gzip-compressed (`MRCONSO.RRF` or `MRCONSO.RRF.gz`).

    sabs: keep only atoms of these source vocabularies (None keeps all).
    keep_suppressed: keep atoms with SUPPRESS other than N (obsolete, suppressible, editor-suppressed).
    keep_cuis: load only these concepts and their successors in the history, so that a retired CUI
        of a 2017AA annotation still reaches its current concept.

    The preferred name is the English atom with TS=P, STT=PF, ISPREF=Y; when filtering removed it, the
    first kept atom stands in (counted in `stats.preferred_fallbacks`). Concepts are kept whatever
    their term types: requiring a TTY=PT atom would drop valid concepts.
    """
    directory = Path(directory)
    stats = UmlsStats()
    history = _find(directory, "MRCUI.RRF", required=False)
    retired, deleted, ambiguous, related = _read_history(history, stats) if history else ({}, set(), {}, {})
    wanted = None if keep_cuis is None else _with_successors(keep_cuis, retired)
    names, preferred = _read_names(
        _find(directory, "MRCONSO.RRF"), None if sabs is None else set(sabs), keep_suppressed, wanted, stats
    )
    types, type_names = _read_types(_find(directory, "MRSTY.RRF"), names)
    concepts = {}
    for cui, spellings in names.items():
        best = preferred.get(cui)
        if best is None:
            best = next(iter(spellings.values()))
            stats.preferred_fallbacks += 1
        # The preferred string leads and keeps its own spelling over an earlier case variant.
        others = tuple(name for key, name in spellings.items() if key != best.casefold())
        concept_types = tuple(types.get(cui, ()))
        if not concept_types:
            stats.untyped_concepts += 1
        concepts[cui] = Concept(cui, best, (best, *others), concept_types)
    return Umls(concepts, retired, deleted, ambiguous, type_names, stats, related)


def resolve_cui(cui: str, umls: Umls) -> str | None:
    """The loaded concept a CUI stands for: itself, or its successor through the history (followed
    over several retirements); None when it is deleted, ambiguous or not loaded."""
    seen = set()
    while cui not in umls.concepts:
        if cui in seen or cui not in umls.retired:
            return None
        seen.add(cui)
        cui = umls.retired[cui]
    return cui


def missing_report(mentions: Iterable[Mention], umls: Umls) -> dict[str, Any]:
    """Count the mentions whose CUI is not a loaded concept, with a reason per CUI.

    Returns {"mentions", "missing_mentions", "missing_cuis", "by_reason" (category → mentions, the
    categories being "retired" (resolvable), "deleted", "ambiguous" (several SY successors), "related only"
    (RB/RN/RO rows, never followed), "not loaded"), "cuis" (CUI →
    {"reason", "mentions"})}, ready for `medrepro.atomic.write_json`.
    """
    counts = Counter(mention.cui for mention in mentions)
    missing = {cui: count for cui, count in sorted(counts.items()) if cui not in umls.concepts}
    by_reason: Counter[str] = Counter()
    cuis = {}
    for cui, count in missing.items():
        category, reason = _missing_reason(cui, umls)
        by_reason[category] += count
        cuis[cui] = {"reason": reason, "mentions": count}
    return {
        "mentions": sum(counts.values()),
        "missing_mentions": sum(missing.values()),
        "missing_cuis": len(missing),
        "by_reason": dict(sorted(by_reason.items())),
        "cuis": cuis,
    }


def rrf_rows(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, field values) of an RRF file, checking every line's field count."""
    for number, line in text_lines(path):
        values = line.split("|")
        # A well-formed line ends with "|", so splitting gives one empty value past the last field.
        if values[-1] or len(values) != len(fields) + 1:
            problem = "does not end with '|'" if values[-1] else f"has {len(values) - 1} fields"
            raise DataError(
                f"line {path}:{number} {problem}; {path.name} rows have {len(fields)} fields, each followed by "
                f"'|' ({'|'.join(fields)}|): the file is truncated or not from a UMLS release, re-extract it"
            )
        yield number, values[:-1]


def _find(directory: Path, name: str, required: bool = True) -> Path | None:
    for folder in (directory, directory / "META"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    if required:
        raise DataError(
            f"no {name} (or {name}.gz) in {directory} or {directory / 'META'}; point the UMLS directory at "
            "the META folder of an extracted Metathesaurus release"
        )
    return None


def _read_history(path: Path, stats: UmlsStats) -> tuple[
        dict[str, str], set[str], dict[str, tuple[str, ...]], dict[str, tuple[tuple[str, str], ...]]]:
    """Retired CUI → successor, deleted CUIs, retired CUIs with several successors, and retired CUIs
    with related concepts only.

    Rule: only REL=SY is a merge. A CUI1 maps to CUI2 when its SY rows name exactly one CUI2; several
    SY targets make it ambiguous (left unmapped and reported). DEL means deleted unless an SY row
    maps the CUI. RB, RN and RO rows (broader, narrower, other related) never map a CUI, even when
    there is only one of them: a broader or related concept is another concept. A CUI1 with such
    rows and no SY or DEL row is `related` (reported with its related CUIs, left unmapped).
    """
    merged: dict[str, set[str]] = {}
    others: dict[str, set[tuple[str, str]]] = {}
    dropped: set[str] = set()
    for _, (cui1, _ver, rel, _rela, _reason, cui2, _mapin) in rrf_rows(path, MRCUI_FIELDS):
        stats.history_rows += 1
        if rel == DELETED:
            dropped.add(cui1)
        elif cui2 and cui2 != cui1:
            if rel == SYNONYMOUS:
                merged.setdefault(cui1, set()).add(cui2)
            else:
                others.setdefault(cui1, set()).add((rel, cui2))
    retired = {cui1: next(iter(targets)) for cui1, targets in merged.items() if len(targets) == 1}
    ambiguous = {cui1: tuple(sorted(targets)) for cui1, targets in merged.items() if len(targets) > 1}
    related = {cui1: tuple(sorted(rows)) for cui1, rows in others.items()
               if cui1 not in merged and cui1 not in dropped}
    return retired, dropped - retired.keys() - ambiguous.keys(), ambiguous, related


def _with_successors(keep_cuis: Iterable[str], retired: dict[str, str]) -> set[str]:
    wanted = set(keep_cuis)
    frontier = list(wanted)
    while frontier:
        successor = retired.get(frontier.pop())
        if successor is not None and successor not in wanted:
            wanted.add(successor)
            frontier.append(successor)
    return wanted


def _read_names(
    path: Path,
    sabs: set[str] | None,
    keep_suppressed: bool,
    wanted: set[str] | None,
    stats: UmlsStats,
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """CUI → {casefolded name → first spelling} in file order, and CUI → preferred name."""
    names: dict[str, dict[str, str]] = {}
    preferred: dict[str, str] = {}
    for _, values in rrf_rows(path, MRCONSO_FIELDS):
        stats.atoms += 1
        cui = values[_CUI]
        if wanted is not None and cui not in wanted:
            stats.unwanted_cui_atoms += 1
        elif values[_LAT] != ENGLISH:
            stats.non_english_atoms += 1
        elif values[_SUPPRESS] != NOT_SUPPRESSED and not keep_suppressed:
            stats.suppressed_atoms += 1
        elif sabs is not None and values[_SAB] not in sabs:
            stats.other_source_atoms += 1
        else:
            stats.kept_atoms += 1
            name = values[_STR]
            spellings = names.setdefault(cui, {})
            key = name.casefold()
            if key in spellings:
                stats.duplicate_names += 1
            else:
                spellings[key] = name
            if values[_TS] == "P" and values[_STT] == "PF" and values[_ISPREF] == "Y":
                preferred.setdefault(cui, name)
    return names, preferred


def _read_types(path: Path, names: Collection[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """CUI → TUIs for the loaded concepts, and TUI → semantic type name for every row."""
    types: dict[str, list[str]] = {}
    type_names: dict[str, str] = {}
    for _, (cui, tui, _stn, sty, _atui, _cvf) in rrf_rows(path, MRSTY_FIELDS):
        type_names.setdefault(tui, sty)
        if cui in names:
            concept_types = types.setdefault(cui, [])
            if tui not in concept_types:
                concept_types.append(tui)
    return types, type_names


def _missing_reason(cui: str, umls: Umls) -> tuple[str, str]:
    """(category, reason) of a CUI that is not a loaded concept."""
    if cui in umls.retired:
        successor = resolve_cui(cui, umls)
        if successor is not None:
            return "retired", f"retired, mapped to {successor}"
        return "not loaded", f"retired, mapped to {umls.retired[cui]}, which is not loaded (filtered or absent)"
    if cui in umls.deleted:
        return "deleted", "deleted in a later release"
    if cui in umls.ambiguous:
        return "ambiguous", f"ambiguous history: merged into several ({', '.join(umls.ambiguous[cui])})"
    if cui in umls.related:
        rows = ", ".join(f"{rel} {cui2}" for rel, cui2 in umls.related[cui])
        return "related only", f"retired without a successor; related concepts, not merges: {rows}"
    return "not loaded", "not loaded (filtered or absent)"
