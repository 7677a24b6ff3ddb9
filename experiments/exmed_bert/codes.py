"""Medical code vocabularies: validation and ancestors for ICD-10-CM, ATC and CPT.

ICD-10-CM is checked against the code table that `simple_icd_10_cm` ships (the CMS release, offline),
so 7th-character extensions and `X` placeholders (S72.001A, T36.0X1A) and letters in the category
(M1A.0) are accepted exactly when the table has them. No freely licensed ATC table exists, so ATC
codes are checked by structure: letter, two digits, letter, letter, two digits, cut at one of the five
levels (1, 3, 4, 5 or 7 characters). CPT codes are five digits or four digits and a letter (categories II
and III); they have no hierarchy here.
"""

import re

import simple_icd_10_cm as icd

KINDS = ("icd10cm", "atc", "cpt")
ATC_LEVELS = (1, 3, 4, 5, 7)
_ATC = re.compile(r"[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?")
_CPT = re.compile(r"[0-9]{4}[0-9FTU]")


def normalize_icd(code: str) -> str | None:
    """The dotted form of a valid ICD-10-CM category or code, else None (chapters and blocks are not codes)."""
    code = code.strip().upper()
    if not icd.is_valid_item(code) or icd.is_chapter_or_block(code):
        return None
    return icd.add_dot(code)


def is_valid(kind: str, code: str) -> bool:
    if kind == "icd10cm":
        return normalize_icd(code) is not None
    if kind == "atc":
        return len(code) in ATC_LEVELS and _ATC.fullmatch(code) is not None
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
