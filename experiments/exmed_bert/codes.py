"""Medical code vocabularies: validation and ancestors for ICD-10-CM, ATC and CPT.

ICD-10-CM is checked against the code table that `simple_icd_10_cm` ships (the CMS release, offline),
so 7th-character extensions and `X` placeholders (S72.001A, T36.0X1A) and letters in the category
(M1A.0) are accepted exactly when the table has them. The table is one release (April 2026); codes of
older releases that it no longer has (retired, or expanded into longer codes) are well formed but
absent: `resolve_icd` maps them to their nearest ancestor that the table has (E11.659 → E11.65,
K35.8X → K35.8), which is how the data's `data.retired_icd: ancestor` policy keeps them.

No freely licensed ATC table exists, so ATC codes are checked by their structure, level by level, as
the WHO Collaborating Centre for Drug Statistics Methodology defines it (Guidelines for ATC
classification and DDD assignment, part II.A "Structure and nomenclature"; metformin: A, A10, A10B,
A10BA, A10BA02):
  1. anatomical main group: one of the fourteen letters A B C D G H J L M N P R S V;
  2. therapeutic subgroup: two digits, numbered from 01 (00 is no group);
  3. pharmacological or therapeutic subgroup: a letter;
  4. chemical, pharmacological or therapeutic subgroup: a letter;
  5. chemical substance: two digits, numbered from 01.
A code is cut after one of the five levels (1, 3, 4, 5 or 7 characters). ATCvet codes (Q...) are not
human ATC codes and are refused. CPT codes are five digits or four digits and a letter (categories
II and III); they have no hierarchy here.
"""

import re

import simple_icd_10_cm as icd

KINDS = ("icd10cm", "atc", "cpt")
ATC_LEVELS = (1, 3, 4, 5, 7)
ATC_MAIN_GROUPS = "ABCDGHJLMNPRSV"
_ATC_NUMBER = "(0[1-9]|[1-9][0-9])"  # two digits, 01 to 99: levels 2 and 5 are numbered from 01
# Level 1, then each further level only after the one before it.
_ATC = re.compile(f"[{ATC_MAIN_GROUPS}]({_ATC_NUMBER}([A-Z]([A-Z]{_ATC_NUMBER}?)?)?)?")
_CPT = re.compile(r"[0-9]{4}[0-9FTU]")
# An ICD-10-CM code's shape: category (letter, digit, digit or letter), then up to four characters.
_ICD_SHAPE = re.compile(r"[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?")


def normalize_icd(code: str) -> str | None:
    """The dotted form of a valid ICD-10-CM category or code, else None (chapters and blocks are not codes)."""
    code = code.strip().upper()
    if not icd.is_valid_item(code) or icd.is_chapter_or_block(code):
        return None
    return icd.add_dot(code)


def resolve_icd(code: str) -> tuple[str | None, str]:
    """(dotted code, how): how is "valid" (in the table), "ancestor" (well formed, absent from the table,
    the code is its nearest ancestor that the table has), "unknown" (well formed, no ancestor in the
    table) or "malformed" (not shaped like an ICD-10-CM code)."""
    code = code.strip().upper()
    if (found := normalize_icd(code)) is not None:
        return found, "valid"
    if _ICD_SHAPE.fullmatch(code) is None:
        return None, "malformed"
    undotted = code.replace(".", "")
    for end in range(len(undotted) - 1, 2, -1):
        if (found := normalize_icd(undotted[:end])) is not None:
            return found, "ancestor"
    return None, "unknown"


def is_valid(kind: str, code: str) -> bool:
    if kind == "icd10cm":
        return normalize_icd(code) is not None
    if kind == "atc":
        return _ATC.fullmatch(code) is not None  # the pattern allows the five level lengths only
    if kind == "cpt":
        return _CPT.fullmatch(code) is not None
    raise ValueError(f"unknown code kind {kind!r}")


def ancestors(kind: str, code: str) -> list[str]:
    """Ancestors from the nearest up: E11.65 → E11.6, E11; N02BE01 → N02BE, N02B, N02, N; CPT → []."""
    if kind == "icd10cm":
        # The table's ancestors end with the block and chapter, which are not codes.
        return [a for a in icd.get_ancestors(code) if not icd.is_chapter_or_block(a)]
    if kind == "atc":
        return [code[:n] for n in reversed(ATC_LEVELS) if n < len(code)]
    return []
