import gzip
from pathlib import Path

import pytest

from experiments.cross_encoder.records import Mention
from experiments.cross_encoder.umls import (
    MRCONSO_FIELDS,
    load_umls,
    missing_report,
    resolve_cui,
)
from medrepro.errors import DataError

# Synthetic rows only: UMLS content is licensed.
PREFERRED = ("P", "PF", "Y")


def _atom(
    cui: str,
    name: str,
    lat: str = "ENG",
    flags: tuple[str, str, str] = ("S", "PF", "Y"),
    sab: str = "SNOMEDCT_US",
    tty: str = "SY",
    suppress: str = "N",
) -> str:
    ts, stt, ispref = flags
    fields = (cui, lat, ts, "L1", stt, "S1", ispref, "A1", "", "", "", sab, tty, "123", name, "0", suppress, "")
    assert len(fields) == len(MRCONSO_FIELDS)
    return "|".join(fields) + "|\n"


CONSO = [
    # C0000001: the preferred atom comes after a synonym and after a Spanish atom flagged preferred.
    _atom("C0000001", "renal failure, acute"),
    _atom("C0000001", "insuficiencia renal aguda", lat="SPA", flags=PREFERRED, sab="MSHSPA", tty="MH"),
    _atom("C0000001", "Acute renal failure", flags=PREFERRED, tty="PT"),
    _atom("C0000001", "ACUTE RENAL FAILURE", flags=("P", "VC", "Y"), sab="NCI"),
    _atom("C0000001", "ARF", sab="NCI", tty="AB"),
    _atom("C0000001", "Acute renal failure NOS", suppress="O", tty="OP"),
    # C0000002: no atom qualifies as preferred and none has TTY=PT; the first kept atom stands in.
    _atom("C0000002", "kidney pain", sab="MSH", tty="ET"),
    _atom("C0000002", "renal pain", sab="MSH", tty="ET"),
    _atom("C0000002", "Renal pain [obsolete]", flags=PREFERRED, suppress="E"),
    # C0000003: the preferred atom is MSH; filtering to SNOMEDCT_US forces the fallback.
    _atom("C0000003", "Kidney", flags=PREFERRED, sab="MSH", tty="MH"),
    _atom("C0000003", "kidney structure"),
    # C0000004: only foreign atoms, so no English concept.
    _atom("C0000004", "Niere", lat="GER", flags=PREFERRED, sab="MSHGER", tty="MH"),
]
STY = [
    "C0000001|T047|B2.2.1.2.1|Disease or Syndrome|AT1||\n",
    "C0000002|T184|A2.2.2|Sign or Symptom|AT2||\n",
    "C0000002|T033|A2.2|Finding|AT3||\n",
    "C0000099|T121|A1.4.1.1.1|Pharmacologic Substance|AT4||\n",
]
CUI_HISTORY = [
    "C0000010|2018AA|SY|||C0000001|Y|\n",  # merged: maps
    "C0000011|2018AA|DEL|||||\n",  # deleted
    "C0000012|2018AB|RB|||C0000001|Y|\n",  # broader and narrower: related, not merged
    "C0000012|2018AB|RN|||C0000002|Y|\n",
    "C0000013|2019AA|SY|||C0000002|Y|\n",  # SY is followed, RO beside it is not
    "C0000013|2019AA|RO|||C0000003|Y|\n",
    "C0000014|2019AA|SY|||C0000010|Y|\n",  # merged into a CUI itself retired: a chain
    "C0000015|2019AA|SY|||C0000099|Y|\n",  # maps to a concept that is not loaded
    "C0000016|2019AA|SY|||C0000001|Y|\n",  # split into two: ambiguous
    "C0000016|2019AA|SY|||C0000003|Y|\n",
    "C0000017|2019AA|RO|||C0000003|Y|\n",  # a single "other related" row is still not a merge
]


def _write_umls(directory: Path, conso: list[str] = CONSO, history: list[str] | None = CUI_HISTORY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "MRCONSO.RRF").write_text("".join(conso), encoding="utf-8")
    (directory / "MRSTY.RRF").write_text("".join(STY), encoding="utf-8")
    if history is not None:
        (directory / "MRCUI.RRF").write_text("".join(history), encoding="utf-8")
    return directory


def test_keeps_english_unsuppressed_names_with_the_preferred_first(tmp_path: Path) -> None:
    umls = load_umls(_write_umls(tmp_path))
    assert sorted(umls.concepts) == ["C0000001", "C0000002", "C0000003"]
    concept = umls.concepts["C0000001"]
    assert concept.preferred == "Acute renal failure"
    # Case-insensitive duplicates are dropped; the Spanish and the suppressed atoms are left out.
    assert concept.names == ("Acute renal failure", "renal failure, acute", "ARF")
    assert umls.stats.non_english_atoms == 2
    assert umls.stats.suppressed_atoms == 2
    assert umls.stats.duplicate_names == 1
    assert umls.stats.atoms == len(CONSO)


def test_preferred_name_falls_back_to_the_first_kept_atom(tmp_path: Path) -> None:
    umls = load_umls(_write_umls(tmp_path))
    # No TTY=PT atom and no qualifying preferred atom: the concept is kept all the same.
    assert umls.concepts["C0000002"].preferred == "kidney pain"
    assert umls.concepts["C0000002"].names == ("kidney pain", "renal pain")
    assert umls.stats.preferred_fallbacks == 1


def test_keep_suppressed_keeps_suppressed_atoms(tmp_path: Path) -> None:
    umls = load_umls(_write_umls(tmp_path), keep_suppressed=True)
    assert "Acute renal failure NOS" in umls.concepts["C0000001"].names
    # The suppressed atom of C0000002 qualifies as preferred once kept.
    assert umls.concepts["C0000002"].preferred == "Renal pain [obsolete]"
    assert umls.stats.suppressed_atoms == 0


def test_source_filter(tmp_path: Path) -> None:
    umls = load_umls(_write_umls(tmp_path), sabs={"SNOMEDCT_US"})
    assert sorted(umls.concepts) == ["C0000001", "C0000003"]
    assert umls.concepts["C0000001"].names == ("Acute renal failure", "renal failure, acute")
    assert umls.concepts["C0000003"].preferred == "kidney structure"
    assert umls.stats.preferred_fallbacks == 1


def test_semantic_types_and_their_names(tmp_path: Path) -> None:
    umls = load_umls(_write_umls(tmp_path))
    assert umls.concepts["C0000001"].types == ("T047",)
    assert umls.concepts["C0000002"].types == ("T184", "T033")
    assert umls.concepts["C0000003"].types == ()
    assert umls.stats.untyped_concepts == 1
    assert umls.type_names["T184"] == "Sign or Symptom"
    assert "C0000099" not in umls.concepts  # a type row does not make a concept


def test_concept_history(tmp_path: Path) -> None:
    umls = load_umls(_write_umls(tmp_path))
    assert umls.retired == {
        "C0000010": "C0000001",
        "C0000013": "C0000002",
        "C0000014": "C0000010",
        "C0000015": "C0000099",
    }
    assert umls.deleted == {"C0000011"}
    assert umls.ambiguous == {"C0000016": ("C0000001", "C0000003")}
    assert umls.related == {"C0000012": (("RB", "C0000001"), ("RN", "C0000002")),
                            "C0000017": (("RO", "C0000003"),)}
    assert umls.stats.history_rows == len(CUI_HISTORY)


def test_resolve_cui_follows_the_history(tmp_path: Path) -> None:
    umls = load_umls(_write_umls(tmp_path))
    assert resolve_cui("C0000001", umls) == "C0000001"
    assert resolve_cui("C0000010", umls) == "C0000001"
    assert resolve_cui("C0000014", umls) == "C0000001"
    for unresolvable in ("C0000011", "C0000012", "C0000015", "C0000016", "C0000017", "C0000077"):
        assert resolve_cui(unresolvable, umls) is None


def test_resolve_cui_survives_a_cycle(tmp_path: Path) -> None:
    cycle = ["C0000020|2018AA|SY|||C0000021|Y|\n", "C0000021|2018AA|SY|||C0000020|Y|\n"]
    umls = load_umls(_write_umls(tmp_path, history=cycle))
    assert resolve_cui("C0000020", umls) is None


def test_history_is_optional(tmp_path: Path) -> None:
    umls = load_umls(_write_umls(tmp_path, history=None))
    assert (umls.retired, umls.deleted, umls.ambiguous, umls.related) == ({}, set(), {}, {})
    assert resolve_cui("C0000010", umls) is None


def test_missing_report_gives_a_reason_per_cui(tmp_path: Path) -> None:
    umls = load_umls(_write_umls(tmp_path))
    cuis = ["C0000001", "C0000001", "C0000010", "C0000011", "C0000011", "C0000012", "C0000015", "C0000016",
            "C0000017", "C0000077"]
    mentions = [Mention("1", 0, 1, "x", ("T047",), cui) for cui in cuis]
    report = missing_report(mentions, umls)
    assert report["mentions"] == 10
    assert report["missing_mentions"] == 8
    assert report["missing_cuis"] == 7
    assert report["by_reason"] == {"ambiguous": 1, "deleted": 2, "not loaded": 2, "related only": 2, "retired": 1}
    assert report["cuis"] == {
        "C0000010": {"reason": "retired, mapped to C0000001", "mentions": 1},
        "C0000011": {"reason": "deleted in a later release", "mentions": 2},
        "C0000012": {"reason": "retired without a successor; related concepts, not merges: RB C0000001, "
                               "RN C0000002", "mentions": 1},
        "C0000015": {
            "reason": "retired, mapped to C0000099, which is not loaded (filtered or absent)",
            "mentions": 1,
        },
        "C0000016": {"reason": "ambiguous history: merged into several (C0000001, C0000003)", "mentions": 1},
        "C0000017": {"reason": "retired without a successor; related concepts, not merges: RO C0000003",
                     "mentions": 1},
        "C0000077": {"reason": "not loaded (filtered or absent)", "mentions": 1},
    }


def test_keep_cuis_loads_only_those_and_their_successors(tmp_path: Path) -> None:
    umls = load_umls(_write_umls(tmp_path), keep_cuis={"C0000014", "C0000003"})
    # C0000014 → C0000010 → C0000001 through the history; C0000002 is not needed.
    assert sorted(umls.concepts) == ["C0000001", "C0000003"]
    assert umls.stats.unwanted_cui_atoms == 4
    assert resolve_cui("C0000014", umls) == "C0000001"


def test_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    conso = [*CONSO[:2], "C0000001|ENG|P|L1|PF|S1|Y|A1||||SNOMEDCT_US|PT|1|Acute renal failure|0|N|\n", *CONSO[2:]]
    with pytest.raises(DataError, match=r"MRCONSO\.RRF:3 has 17 fields"):
        load_umls(_write_umls(tmp_path, conso=conso))


def test_missing_final_bar_is_rejected(tmp_path: Path) -> None:
    directory = _write_umls(tmp_path)
    (directory / "MRSTY.RRF").write_text("C0000001|T047|B2.2.1.2.1|Disease or Syndrome|AT1|256\n")
    with pytest.raises(DataError, match=r"MRSTY\.RRF:1 does not end with '\|'"):
        load_umls(directory)


def test_missing_field_is_rejected(tmp_path: Path) -> None:
    directory = _write_umls(tmp_path)
    (directory / "MRSTY.RRF").write_text("C0000001|T047|B2.2.1.2.1|Disease or Syndrome|AT1|\n")
    with pytest.raises(DataError, match=r"MRSTY\.RRF:1 has 5 fields"):
        load_umls(directory)


def test_bad_history_line_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"MRCUI\.RRF:2 has 5 fields"):
        load_umls(_write_umls(tmp_path, history=[CUI_HISTORY[0], "C0000011|2018AA|DEL|||\n"]))


def test_gzip_files_in_a_meta_folder(tmp_path: Path) -> None:
    plain = load_umls(_write_umls(tmp_path / "plain"))
    meta = tmp_path / "release" / "META"
    meta.mkdir(parents=True)
    for name, rows in (("MRCONSO.RRF", CONSO), ("MRSTY.RRF", STY), ("MRCUI.RRF", CUI_HISTORY)):
        (meta / f"{name}.gz").write_bytes(gzip.compress("".join(rows).encode("utf-8")))
    packed = load_umls(tmp_path / "release")
    assert packed.concepts == plain.concepts
    assert packed.retired == plain.retired


def test_missing_mrconso_is_named(tmp_path: Path) -> None:
    (tmp_path / "MRSTY.RRF").write_text("".join(STY))
    with pytest.raises(DataError, match=r"no MRCONSO\.RRF \(or MRCONSO\.RRF\.gz\)"):
        load_umls(tmp_path)
