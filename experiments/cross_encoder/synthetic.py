"""Synthetic UMLS and MedMentions in exactly the real file formats: the built-in default data.

UMLS is licensed and cannot ship, so the experiment runs out of the box, and its tests run, on these:
MRCONSO/MRSTY/MRCUI rows with fake CUIs (`C9` + 6 digits) and a PubTator corpus whose mentions are
surface variants of the concepts' names. They exercise what the readers must handle in real releases:
non-English and suppressed atoms to drop, concepts without a preferred atom or without a TTY=PT atom,
case variants, concepts with two semantic types, and retired CUIs (merged, deleted, ambiguous) used by
some mentions as MedMentions' 2017AA annotation does. Groups of concepts share words ("acute renal
failure", "chronic renal failure", "acute hepatic failure"), so hard negatives exist.

Some names are ambiguous across semantic types, as abbreviations are in real text: "RI" is renal
insufficiency, renal infarction and renal injury (disorders) and renal imaging (a procedure). The
sentences place each mention where its kind of concept belongs ("patients with @", "@ was
performed"), so the words around an ambiguous mention, with the candidates' semantic types, tell
which concept it is; the mention string alone cannot.
"""

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

from experiments.cross_encoder.layout import CORPUS_NAME, SPLIT_FILES
from experiments.cross_encoder.records import Concept
from experiments.cross_encoder.umls import Umls, load_umls, resolve_cui
from medrepro import atomic

# Real TUIs with their tree numbers and names.
SEMANTIC_TYPES: dict[str, tuple[str, str]] = {
    "T023": ("A1.2.3.1", "Body Part, Organ, or Organ Component"),
    "T033": ("A2.2", "Finding"),
    "T037": ("B2.3", "Injury or Poisoning"),
    "T047": ("B2.2.1.2.1", "Disease or Syndrome"),
    "T061": ("B1.3.1.3", "Therapeutic or Preventive Procedure"),
    "T121": ("A1.4.1.1.1", "Pharmacologic Substance"),
    "T184": ("A2.2.2", "Sign or Symptom"),
    "T191": ("B2.2.1.2.1.2", "Neoplastic Process"),
}

# (adjective, noun, Spanish, French, German); the foreign names become non-English atoms.
_ORGANS: tuple[tuple[str, str, str, str, str], ...] = (
    ("renal", "kidney", "riñón", "rein", "Niere"),
    ("hepatic", "liver", "hígado", "foie", "Leber"),
    ("cardiac", "heart", "corazón", "cœur", "Herz"),
    ("pulmonary", "lung", "pulmón", "poumon", "Lunge"),
    ("gastric", "stomach", "estómago", "estomac", "Magen"),
    ("cerebral", "brain", "cerebro", "cerveau", "Gehirn"),
    ("adrenal", "adrenal gland", "glándula suprarrenal", "glande surrénale", "Nebenniere"),
    ("pancreatic", "pancreas", "páncreas", "pancréas", "Bauchspeicheldrüse"),
    ("splenic", "spleen", "bazo", "rate", "Milz"),
    ("thyroid", "thyroid gland", "glándula tiroides", "glande thyroïde", "Schilddrüse"),
    ("ovarian", "ovary", "ovario", "ovaire", "Eierstock"),
    ("testicular", "testis", "testículo", "testicule", "Hoden"),
    ("ocular", "eye", "ojo", "œil", "Auge"),
    ("cutaneous", "skin", "piel", "peau", "Haut"),
    ("vesical", "urinary bladder", "vejiga urinaria", "vessie", "Harnblase"),
    ("colonic", "colon", "intestino grueso", "côlon", "Dickdarm"),
    ("esophageal", "esophagus", "esófago", "œsophage", "Speiseröhre"),
    ("intestinal", "intestine", "intestino", "intestin", "Darm"),
    ("osseous", "bone", "hueso", "tissu osseux", "Knochen"),
    ("muscular", "muscle", "músculo", "tissu musculaire", "Muskel"),
)
# (condition, TUI, modifiers, Spanish condition)
_CONDITIONS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("failure", "T047", ("acute", "chronic", "acute-on-chronic"), "insuficiencia"),
    ("insufficiency", "T047", ("acute", "chronic"), "insuficiencia"),
    ("infarction", "T047", ("acute", "old", "silent"), "infarto"),
    ("injury", "T037", ("acute", "traumatic", "blunt"), "lesión"),
    ("neoplasm", "T191", ("benign", "malignant", "primary", "secondary"), "neoplasia"),
    ("carcinoma", "T191", ("primary", "metastatic"), "carcinoma"),
    ("pain", "T184", ("acute", "chronic", "referred"), "dolor"),
    ("mass", "T033", ("palpable", "cystic", "solid"), "masa"),
)
# (procedure, alternative wording), all T061. Most share their initial with a condition (fixation /
# failure; imaging / insufficiency, infarction, injury; needle biopsy / neoplasm; ...), so "RI" or
# "CP" names a disorder and a procedure of one organ: abbreviations ambiguous across types.
_PROCEDURES: tuple[tuple[str, str], ...] = (
    ("transplantation", "transplant"),
    ("resection", "excision"),
    ("fixation", "stabilization"),
    ("imaging", "scan"),
    ("needle biopsy", "core biopsy"),
    ("catheterization", "cannulation"),
    ("puncture", "aspiration"),
    ("mobilization", "release"),
)
_DRUG_STEMS = ("meto", "ateno", "biso", "cande", "losa", "valsa", "amlo", "nife", "simva", "atorva", "cipro", "levo")
_DRUG_SUFFIXES = ("prolol", "sartan", "pril", "statin", "dipine", "floxacin")
_SALTS = ("hydrochloride", "sodium", "potassium", "calcium", "tartrate", "succinate", "besylate", "mesylate")

_PREFERRED_FLAGS = ("P", "PF", "Y")  # TS, STT, ISPREF of the concept's preferred atom
_OTHER_FLAGS = (("S", "PF", "Y"), ("S", "VO", "N"), ("P", "VO", "Y"))
_SOURCES = (("SNOMEDCT_US", "SY"), ("NCI", "SY"), ("MSH", "ET"), ("MEDCIN", "PT"))
_SOURCES_WITHOUT_PT = (("SNOMEDCT_US", "SY"), ("NCI", "SY"), ("MSH", "ET"))
# SUPPRESS flag → (SAB, TTY, how the string is marked)
_SUPPRESSED = {
    "O": ("SNOMEDCT_US", "OP", "{} [obsolete]"),
    "E": ("NCI", "SY", "[X]{}"),
    "Y": ("SNOMEDCT_US", "IS", "{}, NOS"),
}
_SOURCE_RESTRICTION = {
    "SNOMEDCT_US": "9", "MSH": "0", "NCI": "0", "MEDCIN": "3", "MSHSPA": "3", "MSHFRE": "3", "MSHGER": "3",
}  # fmt: skip
_FOREIGN_RATE = 0.5
_HISTORY_VERSIONS = ("2017AB", "2018AA", "2018AB", "2019AA", "2020AA")

# Mentions: "@" and a letter is a mention of a concept of that kind (see _KIND_OF_TYPE: D a disorder,
# P a procedure, R a drug, A a body part), "#" a number.
_TITLES = (
    "@D in adults: a retrospective cohort study",
    "Risk of @D after @P",
    "Outcomes of @P in a tertiary care centre",
    "@D presenting as @D: a case report",
    "Predictors of @D among hospitalised patients",
    "Long-term follow-up of patients treated with @R",
    "Anatomical variants of the @A in @D",
)
_SENTENCES = (
    "We reviewed the records of # patients with @D.",
    "The incidence of @D was # per 1000 person-years.",
    "@D was associated with @D in the multivariable model.",
    "Patients who received @R had fewer episodes of @D.",
    "No cases of @D were observed during # months of follow-up.",
    "These findings suggest that @D should be considered in the differential diagnosis of @D.",
    "Further studies are needed to clarify the role of @R.",
    "Baseline characteristics were similar between the groups.",
    "The median age was # years.",
    "@D was treated with @R in # cases.",
    "@P was performed in # patients under general anaesthesia.",
    "Patients who underwent @P were discharged after # days.",
    "Imaging showed @D in # of the patients.",
    "The dose of @R was # mg daily.",
    "The @A was examined in # of the patients.",
)
_KIND_OF_TYPE = {"T061": "P", "T121": "R", "T023": "A"}  # any other primary type: D
# How papers write a concept. Exact names are a minority, as in MedMentions, so that a retriever
# matching strings is far from perfect and a re-ranker has something to fix.
_VARIANTS = ("exact", "lowercase", "reorder", "abbreviation", "typo", "plural")
_VARIANT_WEIGHTS = (0.15, 0.1, 0.15, 0.25, 0.2, 0.15)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_RETIRED_MENTION_RATE = 0.05
_SPLIT_FRACTIONS = (0.7, 0.15)  # train, dev; test takes the rest

# Given the kind of concept wanted and whether the mention starts a sentence: (surface text, concept,
# CUI written in the corpus).
_MentionMaker = Callable[[str, bool], tuple[str, Concept, str]]


@dataclass(frozen=True)
class _Entry:
    """A concept before it gets a CUI."""

    preferred: str
    synonyms: tuple[str, ...]  # other English names; an all-capitals one is an abbreviation
    tui: str
    foreign: tuple[tuple[str, str], ...]  # (LAT, string)


def write_synthetic_umls(directory: str | Path, n_concepts: int, seed: int) -> Path:
    """Write MRCONSO.RRF, MRSTY.RRF and MRCUI.RRF for `n_concepts` concepts into `directory` and
    return it. The same arguments give the same bytes."""
    if n_concepts < 1:
        raise ValueError(f"n_concepts must be at least 1, got {n_concepts}")
    rng = random.Random(seed)
    entries = _draw_entries(rng, n_concepts)
    merged = [i for i in range(n_concepts) if i % 15 in (3, 9)]  # SY at 3, RO at 9
    n_deleted = max(1, n_concepts // 40)
    n_ambiguous = (n_concepts + 99) // 100 if n_concepts >= 2 else 0
    numbers = rng.sample(range(1_000_000), n_concepts + len(merged) + n_deleted + n_ambiguous)
    cuis = [f"C9{number:06d}" for number in sorted(numbers[:n_concepts])]
    old = iter(f"C9{number:06d}" for number in numbers[n_concepts:])

    ids = _Identifiers()
    conso: list[str] = []
    sty: list[str] = []
    for i, (cui, entry) in enumerate(zip(cuis, entries, strict=True)):
        conso.extend(_atom_line(cui, atom, ids, i) for atom in _atoms(rng, entry, i))
        tuis = [entry.tui]
        if i % 10 == 7:
            tuis.append(rng.choice([tui for tui in SEMANTIC_TYPES if tui != entry.tui]))
        for tui in tuis:
            tree_number, name = SEMANTIC_TYPES[tui]
            sty.append(f"{cui}|{tui}|{tree_number}|{name}|{ids.serial('AT9', 6)}||")

    history: list[str] = []
    for i in merged:
        # SY: merged into the concept (a reader follows it). RO: only "other related" to it, which is
        # not a merge: the retired CUI has no successor, however few rows it has.
        relation = "SY" if i % 15 == 3 else "RO"
        history.append(f"{next(old)}|{rng.choice(_HISTORY_VERSIONS)}|{relation}|||{cuis[i]}|Y|")
    history.extend(f"{next(old)}|{rng.choice(_HISTORY_VERSIONS)}|DEL|||||" for _ in range(n_deleted))
    for k in range(n_ambiguous):
        retired, version = next(old), rng.choice(_HISTORY_VERSIONS)
        first, second = rng.sample(cuis, 2)
        # Alternately a split (merged into two concepts: ambiguous) and a broader/narrower pair (related only).
        relations = ("SY", "SY") if k % 2 == 0 else ("RB", "RN")
        history.append(f"{retired}|{version}|{relations[0]}|||{first}|Y|")
        history.append(f"{retired}|{version}|{relations[1]}|||{second}|Y|")

    directory = Path(directory)
    atomic.write_text(directory / "MRCONSO.RRF", "".join(f"{line}\n" for line in conso))
    atomic.write_text(directory / "MRSTY.RRF", "".join(f"{line}\n" for line in sty))
    # Real MRCUI is sorted by CUI1; the sort is stable, so a CUI1's rows stay together in order.
    atomic.write_text(directory / "MRCUI.RRF", "".join(f"{line}\n" for line in sorted(history, key=_first_field)))
    return directory


def write_synthetic_medmentions(
    directory: str | Path, umls_dir_or_concepts: str | Path | Umls | Mapping[str, Concept], n_documents: int, seed: int
) -> Path:
    """Write `corpus_pubtator.txt` and the three official split files (about 70/15/15 by document)
    into `directory`, and return the corpus path.

    Mentions name concepts of `umls_dir_or_concepts`: a UMLS directory (loaded with `load_umls`), a
    loaded `Umls`, or a CUI → Concept mapping. With a history (the first two), a few mentions use a
    retired CUI whose successor is loaded. The same arguments give the same bytes.
    """
    if n_documents < 1:
        raise ValueError(f"n_documents must be at least 1, got {n_documents}")
    concepts, aliases, related = _concept_source(umls_dir_or_concepts)
    if not concepts:
        raise ValueError("no concepts to mention: the UMLS source is empty")
    rng = random.Random(seed)
    # Popularity follows a Zipf-like law within each kind, as in real corpora: a few concepts are
    # frequent, most rare. A kind without concepts (a small test vocabulary) takes any concept.
    popular = [concepts[cui] for cui in sorted(concepts)]
    rng.shuffle(popular)
    by_kind = {kind: [c for c in popular if _kind(c) == kind] for kind in "DPRA"}
    pools = {kind: members or popular for kind, members in by_kind.items()}
    weights = {kind: list(accumulate(1.0 / rank for rank in range(1, len(pool) + 1))) for kind, pool in pools.items()}

    def mention(kind: str, at_start: bool) -> tuple[str, Concept, str]:
        concept = rng.choices(pools[kind], cum_weights=weights[kind])[0]
        surface = _surface(rng, concept)
        if at_start:
            surface = surface[0].upper() + surface[1:]
        cui = concept.cui
        if concept.cui in aliases and rng.random() < _RETIRED_MENTION_RATE:
            cui = rng.choice(aliases[concept.cui])
        elif concept.cui in related and rng.random() < _RETIRED_MENTION_RATE / 2:
            cui = rng.choice(related[concept.cui])
        return surface, concept, cui

    pmids = [str(pmid) for pmid in rng.sample(range(20_000_000, 30_000_000), n_documents)]
    blocks = []
    for pmid in pmids:
        text = _Text()
        text.sentence(rng, rng.choice(_TITLES), mention)
        title_end = len(text.value)
        for _ in range(rng.randint(4, 9)):
            text.space()
            text.sentence(rng, rng.choice(_SENTENCES), mention)
        lines = [f"{pmid}|t|{text.value[:title_end]}", f"{pmid}|a|{text.value[title_end + 1 :]}"]
        lines.extend(
            f"{pmid}\t{start}\t{end}\t{text.value[start:end]}\t{','.join(concept.types)}\t{cui}"
            for start, end, concept, cui in text.mentions
        )
        blocks.append("".join(f"{line}\n" for line in lines) + "\n")

    directory = Path(directory)
    corpus = directory / CORPUS_NAME
    atomic.write_text(corpus, "".join(blocks))
    order = list(range(n_documents))
    rng.shuffle(order)
    n_train = round(_SPLIT_FRACTIONS[0] * n_documents)
    n_dev = round(_SPLIT_FRACTIONS[1] * n_documents)
    bounds = {"train": (0, n_train), "dev": (n_train, n_train + n_dev), "test": (n_train + n_dev, n_documents)}
    for split, (first, last) in bounds.items():
        members = set(order[first:last])
        listed = "".join(f"{pmid}\n" for i, pmid in enumerate(pmids) if i in members)
        atomic.write_text(directory / SPLIT_FILES[split], listed)
    return corpus


def _draw_entries(rng: random.Random, n: int) -> list[_Entry]:
    """n distinct concepts in random order; past the ~800 base concepts, numbered copies ("... type 2")."""
    base = _base_entries()
    entries: list[_Entry] = []
    round_ = 1
    while len(entries) < n:
        batch = base if round_ == 1 else [_numbered(entry, round_) for entry in base]
        entries.extend(rng.sample(batch, min(len(batch), n - len(entries))))
        round_ += 1
    return entries


def _base_entries() -> list[_Entry]:
    entries = []
    for adjective, noun, spanish, french, german in _ORGANS:
        entries.append(
            _Entry(
                noun.capitalize(),
                (f"{noun} structure", f"structure of {noun}", f"{adjective} structure", f"entire {noun}"),
                "T023",
                (("SPA", spanish), ("FRE", french), ("GER", german)),
            )
        )
        for condition, tui, modifiers, spanish_condition in _CONDITIONS:
            foreign = (("SPA", f"{spanish_condition} de {spanish}"),)
            entries.append(
                _Entry(
                    f"{adjective} {condition}".capitalize(),
                    (
                        f"{noun} {condition}",
                        f"{condition} of {noun}",
                        f"{condition} of the {noun}",
                        _initials(adjective, condition),
                    ),
                    tui,
                    foreign,
                )
            )
            entries.extend(
                _Entry(
                    f"{modifier} {adjective} {condition}".capitalize(),
                    (
                        f"{noun} {condition}, {modifier}",
                        f"{modifier} {noun} {condition}",
                        f"{adjective} {condition}, {modifier}",
                        _initials(modifier, adjective, condition),
                    ),
                    tui,
                    foreign,
                )
                for modifier in modifiers
            )
        entries.extend(
            _Entry(
                f"{adjective} {procedure}".capitalize(),
                (f"{noun} {procedure}", f"{procedure} of {noun}", f"{alternative} of {noun}", f"{noun} {alternative}",
                 _initials(adjective, procedure)),
                "T061",
                (),
            )
            for procedure, alternative in _PROCEDURES
        )
    for i, stem in enumerate(_DRUG_STEMS):
        for j, suffix in enumerate(_DRUG_SUFFIXES):
            drug = stem + suffix
            salts = tuple(_SALTS[(i + j + 3 * k) % len(_SALTS)] for k in range(3))
            entries.append(_Entry(drug, tuple(f"{drug} {salt}" for salt in salts), "T121", ()))
    return entries


def _initials(*words: str) -> str:
    return "".join(word[0] for word in words).upper()


def _numbered(entry: _Entry, number: int) -> _Entry:
    def mark(name: str) -> str:
        return f"{name}{number}" if _is_abbreviation(name) else f"{name} type {number}"

    return _Entry(
        mark(entry.preferred),
        tuple(mark(name) for name in entry.synonyms),
        entry.tui,
        tuple((language, f"{name} {number}") for language, name in entry.foreign),
    )


def _is_abbreviation(name: str) -> bool:
    return name.isupper() and " " not in name


@dataclass(frozen=True)
class _Atom:
    lat: str
    flags: tuple[str, str, str]  # TS, STT, ISPREF
    sab: str
    tty: str
    name: str
    suppress: str = "N"


def _atoms(rng: random.Random, entry: _Entry, i: int) -> list[_Atom]:
    """One concept's MRCONSO atoms in file order. The index `i` switches on the rarer cases, so every
    corpus of a dozen concepts or more has each of them."""
    has_preferred = i % 12 != 5
    has_pt = i % 9 != 2
    sources = _SOURCES if has_pt else _SOURCES_WITHOUT_PT
    # Abbreviations are always atoms (real UMLS lists them from several sources); other synonyms vary.
    abbreviations = [name for name in entry.synonyms if _is_abbreviation(name)]
    others = [name for name in entry.synonyms if not _is_abbreviation(name)]
    count = rng.randint(2, min(5, 1 + len(others)))
    atoms = [
        _Atom(
            "ENG",
            _PREFERRED_FLAGS if has_preferred else ("S", "PF", "Y"),
            *(("SNOMEDCT_US", "PT") if has_pt else ("MSH", "MH")),
            entry.preferred,
        )
    ]
    for name in [*abbreviations, *rng.sample(others, count - 1)]:
        source = ("NCI", "AB") if _is_abbreviation(name) else rng.choice(sources)
        atoms.append(_Atom("ENG", rng.choice(_OTHER_FLAGS), *source, name))
    if i % 8 == 3 and not _is_abbreviation(entry.preferred):
        # A case variant: a different string to UMLS, the same name to a case-insensitive reader.
        atoms.append(_Atom("ENG", ("P", "VC", "Y"), "NCI", "SY", entry.preferred.upper()))
    if i % 6 == 1:
        suppress = rng.choice(sorted(_SUPPRESSED))
        sab, tty, marked = _SUPPRESSED[suppress]
        atoms.append(_Atom("ENG", ("S", "PF", "N"), sab, tty, marked.format(entry.preferred), suppress))
    # Foreign atoms are preferred in their own language: a reader must check LAT before the flags.
    atoms.extend(
        _Atom(language, _PREFERRED_FLAGS, f"MSH{language}", "MH", name)
        for language, name in entry.foreign
        if rng.random() < _FOREIGN_RATE
    )
    rng.shuffle(atoms)
    return atoms


class _Identifiers:
    """LUI, SUI and serial numbers, stable for a given sequence of requests."""

    def __init__(self) -> None:
        self.luis: dict[str, str] = {}
        self.suis: dict[str, str] = {}
        self.serials: dict[str, int] = {}

    def serial(self, prefix: str, digits: int) -> str:
        self.serials[prefix] = self.serials.get(prefix, 0) + 1
        return f"{prefix}{self.serials[prefix]:0{digits}d}"

    def lui(self, name: str) -> str:
        # UMLS groups strings into terms by a normalisation much richer than case folding.
        return self.luis.setdefault(name.casefold(), f"L9{len(self.luis):06d}")

    def sui(self, name: str) -> str:
        return self.suis.setdefault(name, f"S9{len(self.suis):06d}")


def _atom_line(cui: str, atom: _Atom, ids: _Identifiers, i: int) -> str:
    """The MRCONSO line of an atom of the i-th concept; source codes are derived from `i`."""
    ts, stt, ispref = atom.flags
    if atom.sab.startswith("MSH"):
        code, scui, sdui = f"D9{i:05d}", f"M9{i:06d}", f"D9{i:05d}"
    else:
        code = f"C{10_000 + i}" if atom.sab == "NCI" else str(9_000_000 + i)
        scui, sdui = code, ""
    fields = (
        cui, atom.lat, ts, ids.lui(atom.name), stt, ids.sui(atom.name), ispref, ids.serial("A9", 7), "", scui, sdui,
        atom.sab, atom.tty, code, atom.name, _SOURCE_RESTRICTION[atom.sab], atom.suppress, "",
    )  # fmt: skip
    return "|".join(fields) + "|"


def _kind(concept: Concept) -> str:
    """The kind of sentence slot a concept fills, by its primary (first) semantic type."""
    return _KIND_OF_TYPE.get(concept.types[0], "D") if concept.types else "D"


def _first_field(line: str) -> str:
    return line.split("|", 1)[0]


def _concept_source(
    source: str | Path | Umls | Mapping[str, Concept],
) -> tuple[Mapping[str, Concept], dict[str, list[str]], dict[str, list[str]]]:
    """The concepts; per concept the retired CUIs that resolve to it; and per concept the retired CUIs
    that are only related to it (RB/RN/RO), as an annotation against an old release may still use."""
    if isinstance(source, str | Path):
        source = load_umls(source)
    if not isinstance(source, Umls):
        return source, {}, {}
    aliases: dict[str, list[str]] = {}
    for retired in sorted(source.retired):
        successor = resolve_cui(retired, source)
        if successor is not None:
            aliases.setdefault(successor, []).append(retired)
    related: dict[str, list[str]] = {}
    for retired, rows in sorted(source.related.items()):
        for _rel, cui in rows:
            if cui in source.concepts:
                related.setdefault(cui, []).append(retired)
    return source.concepts, aliases, related


def _surface(rng: random.Random, concept: Concept) -> str:
    """A way a paper might write the concept: one of its names as is or lowercased, with its words
    reordered (a comma inversion undone or made), abbreviated (initials collide across concepts, as
    real abbreviations do), with one or two typos, or with its head noun in the plural."""
    variant = rng.choices(_VARIANTS, weights=_VARIANT_WEIGHTS)[0]
    name = rng.choice(concept.names)
    if variant == "lowercase":
        return name.lower()
    if variant == "reorder":
        inverted = [candidate for candidate in concept.names if candidate.count(", ") == 1]
        if inverted:
            head, tail = rng.choice(inverted).split(", ")
            return f"{tail} {head}"
        words = name.lower().split()
        if len(words) > 1:
            return f"{' '.join(words[1:])}, {words[0]}"
    if variant == "abbreviation":
        abbreviations = [candidate for candidate in concept.names if _is_abbreviation(candidate)]
        words = re.findall(r"[A-Za-z]+", concept.preferred)
        if abbreviations:
            return rng.choice(abbreviations)
        if len(words) > 1:
            return _initials(*words)
    if variant == "typo":
        typed = name
        for _ in range(rng.choice((1, 1, 2))):
            typed = _typo(rng, typed)
        return typed
    if variant == "plural":
        words = name.split(" ")
        if not _is_abbreviation(name) and "," not in name and words[-1].isalpha():
            return " ".join([*words[:-1], _plural(words[-1])])
    return name


def _typo(rng: random.Random, name: str) -> str:
    """One slip inside a word of five letters or more: two neighbouring letters swapped, a letter
    dropped, doubled or replaced."""
    spots = [match.start() + offset for match in re.finditer(r"[a-z]{5,}", name)
             for offset in range(1, len(match.group()) - 2)]
    if not spots:
        return name
    at = rng.choice(spots)
    kind = rng.choice(("swap", "drop", "double", "replace"))
    if kind == "swap" and name[at] != name[at + 1]:
        return name[:at] + name[at + 1] + name[at] + name[at + 2:]
    if kind == "drop":
        return name[:at] + name[at + 1:]
    if kind == "double":
        return name[:at] + name[at] + name[at:]
    return name[:at] + rng.choice(_LETTERS.replace(name[at], "")) + name[at + 1:]


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "sh", "ch")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


class _Text:
    """Title and abstract as one string, with the mentions placed in it."""

    def __init__(self) -> None:
        self.value = ""
        self.mentions: list[tuple[int, int, Concept, str]] = []  # start, end, concept, CUI written

    def space(self) -> None:
        self.value += " "

    def sentence(self, rng: random.Random, template: str, mention: _MentionMaker) -> None:
        """Append `template` with each "@" and kind letter replaced by a mention of that kind and each
        "#" by a number."""
        sentence_start = len(self.value)
        # re.split with a group alternates text and the kind letters: text, kind, text, kind, ..., text.
        parts = re.split(r"@([DPRA])", template)
        for index, part in enumerate(parts):
            if index % 2:
                surface, concept, cui = mention(part, len(self.value) == sentence_start)
                self.mentions.append((len(self.value), len(self.value) + len(surface), concept, cui))
                self.value += surface
            else:
                self.value += re.sub("#", lambda _: str(rng.randint(3, 480)), part)
