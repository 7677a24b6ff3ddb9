from collections import Counter
from pathlib import Path

import pytest

from experiments.cross_encoder.layout import SPLIT_FILES
from experiments.cross_encoder.medmentions import read_pubtator, read_split_pmids, split_documents
from experiments.cross_encoder.synthetic import SEMANTIC_TYPES, write_synthetic_medmentions, write_synthetic_umls
from experiments.cross_encoder.umls import MRCONSO_FIELDS, Umls, load_umls, resolve_cui

N_CONCEPTS = 150
N_DOCUMENTS = 60


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Umls]:
    root = tmp_path_factory.mktemp("synthetic")
    umls_dir = write_synthetic_umls(root / "umls", N_CONCEPTS, seed=3)
    corpus = write_synthetic_medmentions(root / "medmentions", umls_dir, N_DOCUMENTS, seed=3)
    return umls_dir, corpus, load_umls(umls_dir)


def _conso_rows(umls_dir: Path) -> list[dict[str, str]]:
    lines = (umls_dir / "MRCONSO.RRF").read_text(encoding="utf-8").splitlines()
    return [dict(zip(MRCONSO_FIELDS, line.split("|")[:-1], strict=True)) for line in lines]


def test_umls_has_what_the_reader_must_handle(synthetic: tuple[Path, Path, Umls]) -> None:
    umls_dir, _, umls = synthetic
    rows = _conso_rows(umls_dir)
    assert len(umls.concepts) == N_CONCEPTS
    assert all(cui.startswith("C9") and len(cui) == 8 for cui in umls.concepts)
    assert {row["LAT"] for row in rows} > {"ENG"}
    assert {row["SUPPRESS"] for row in rows} > {"N"}
    assert umls.stats.non_english_atoms > 0 and umls.stats.suppressed_atoms > 0
    assert umls.stats.duplicate_names > 0  # case variants
    # Every kept name comes from an English, unsuppressed atom of its own concept.
    english = {(row["CUI"], row["STR"]) for row in rows if row["LAT"] == "ENG" and row["SUPPRESS"] == "N"}
    for concept in umls.concepts.values():
        assert 2 <= len(concept.names) <= 6  # the preferred name, up to four synonyms, an abbreviation
        assert all((concept.cui, name) in english for name in concept.names)
    # At most one preferred atom per concept; a few concepts have none and fall back.
    preferred = Counter(
        row["CUI"] for row in rows if row["LAT"] == "ENG" and (row["TS"], row["STT"], row["ISPREF"]) == ("P", "PF", "Y")
    )
    assert max(preferred.values()) == 1
    assert umls.stats.preferred_fallbacks == N_CONCEPTS - len(preferred) > 0
    with_pt = {row["CUI"] for row in rows if row["TTY"] == "PT" and row["SUPPRESS"] == "N"}
    assert set(umls.concepts) - with_pt  # concepts without a PT atom are kept


def test_umls_types_history_and_similar_names(synthetic: tuple[Path, Path, Umls]) -> None:
    umls_dir, _, umls = synthetic
    assert umls.type_names == {tui: name for tui, (_, name) in SEMANTIC_TYPES.items() if tui in umls.type_names}
    assert all(concept.types for concept in umls.concepts.values())
    assert any(len(concept.types) == 2 for concept in umls.concepts.values())
    assert umls.retired and umls.deleted and umls.ambiguous and umls.related
    # The generator writes RO rows as "other related", never as merges: none of them maps a CUI.
    history = [line.split("|") for line in (umls_dir / "MRCUI.RRF").read_text().splitlines()]
    assert {row[2] for row in history} == {"SY", "DEL", "RO", "RB", "RN"}
    assert not {row[0] for row in history if row[2] in ("RB", "RN", "RO")} & set(umls.retired)
    assert all(resolve_cui(old, umls) == new for old, new in umls.retired.items())
    assert not (set(umls.retired) | umls.deleted | set(umls.ambiguous)) & set(umls.concepts)
    # Hard negatives: some word is shared by the preferred names of several concepts.
    words = Counter(word for concept in umls.concepts.values() for word in set(concept.preferred.lower().split()))
    assert words.most_common(1)[0][1] >= 5


def test_corpus_round_trips_through_the_real_readers(synthetic: tuple[Path, Path, Umls]) -> None:
    _, corpus, umls = synthetic
    docs = list(read_pubtator(corpus))  # checks every offset against the text
    assert len(docs) == N_DOCUMENTS
    mentions = [mention for doc in docs for mention in doc.mentions]
    assert len(mentions) > 3 * N_DOCUMENTS
    for mention in mentions:
        cui = resolve_cui(mention.cui, umls)
        if cui is None:  # a retired CUI only related (RB/RN/RO) to the mentioned concept: not linkable
            assert mention.cui in umls.related
            continue
        assert mention.types == umls.concepts[cui].types
    assert any(mention.cui in umls.retired for mention in mentions)
    surfaces = {mention.text for mention in mentions}
    names = {name for concept in umls.concepts.values() for name in concept.names}
    assert surfaces & names and surfaces - names  # exact names and variants


def test_documents_hold_several_mentions_each(synthetic: tuple[Path, Path, Umls]) -> None:
    """Evaluation resamples documents, whose mentions share a context; MedMentions' abstracts hold about
    80 mentions each. With one mention a document the smoke run would not exercise that."""
    _, corpus, _ = synthetic
    docs = list(read_pubtator(corpus))
    per_document = sorted(len(doc.mentions) for doc in docs)
    assert per_document[0] >= 3 and per_document[len(per_document) // 2] >= 6
    assert all(mention.pmid == doc.pmid for doc in docs for mention in doc.mentions)


def test_split_files_are_disjoint_and_cover_the_corpus(synthetic: tuple[Path, Path, Umls]) -> None:
    _, corpus, _ = synthetic
    splits = read_split_pmids(corpus.parent)  # also rejects overlaps
    docs = list(read_pubtator(corpus))
    assert set().union(*splits.values()) == {doc.pmid for doc in docs}
    assert [len(splits[split]) for split in ("train", "dev", "test")] == [42, 9, 9]
    grouped = split_documents(docs, splits)
    assert sum(len(group) for group in grouped.values()) == N_DOCUMENTS


def _tree_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    trees = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        umls_dir = write_synthetic_umls(tmp_path / name / "umls", 60, seed)
        write_synthetic_medmentions(tmp_path / name / "mm", umls_dir, 20, seed)
        trees.append({**_tree_bytes(umls_dir), **_tree_bytes(tmp_path / name / "mm")})
    assert set(trees[0]) == {"MRCONSO.RRF", "MRSTY.RRF", "MRCUI.RRF", "corpus_pubtator.txt", *SPLIT_FILES.values()}
    assert trees[0] == trees[1]
    assert all(trees[0][name] != trees[2][name] for name in trees[0])


def test_concept_sources_agree(synthetic: tuple[Path, Path, Umls], tmp_path: Path) -> None:
    _, corpus, umls = synthetic
    from_umls = write_synthetic_medmentions(tmp_path / "umls", umls, N_DOCUMENTS, seed=3)
    assert from_umls.read_bytes() == corpus.read_bytes()
    # Concepts alone carry no history, so every mention names a current CUI.
    plain = write_synthetic_medmentions(tmp_path / "plain", umls.concepts, N_DOCUMENTS, seed=3)
    assert all(mention.cui in umls.concepts for doc in read_pubtator(plain) for mention in doc.mentions)


def test_more_concepts_than_the_vocabulary_stay_distinct(tmp_path: Path) -> None:
    umls = load_umls(write_synthetic_umls(tmp_path, 1000, seed=0))
    assert len(umls.concepts) == 1000
    # Numbered copies keep every concept's names apart from the others' (single names such as an
    # abbreviation may be shared: that ambiguity is intended).
    assert len({frozenset(n.casefold() for n in concept.names) for concept in umls.concepts.values()}) == 1000


def test_sizes_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_concepts"):
        write_synthetic_umls(tmp_path, 0, seed=0)
    umls_dir = write_synthetic_umls(tmp_path, 5, seed=0)
    with pytest.raises(ValueError, match="n_documents"):
        write_synthetic_medmentions(tmp_path, umls_dir, 0, seed=0)


def test_names_shared_by_a_disorder_and_a_procedure_sit_in_sentences_of_their_kind(tmp_path: Path) -> None:
    """Abbreviations such as "RI" name a disorder and a procedure of one organ; the sentence around each
    mention is one written for its gold concept's kind, so context can settle what the string cannot."""
    umls_dir = write_synthetic_umls(tmp_path / "umls", 400, seed=0)
    umls = load_umls(umls_dir)
    corpus = write_synthetic_medmentions(tmp_path / "medmentions", umls, 150, seed=0)
    is_procedure: dict[str, set[bool]] = {}
    for concept in umls.concepts.values():
        for name in concept.names:
            is_procedure.setdefault(name.casefold(), set()).add(concept.types[0] == "T061")
    shared = {name for name, kinds in is_procedure.items() if kinds == {True, False}}
    seen = Counter()
    for doc in read_pubtator(corpus):
        for m in doc.mentions:
            gold = resolve_cui(m.cui, umls)
            if m.text.casefold() not in shared or gold is None:
                continue
            procedure = umls.concepts[gold].types[0] == "T061"
            before, after = doc.text[:m.start], doc.text[m.end:]
            in_procedure_slot = (after.startswith((" was performed", " were discharged")) or
                                 before.endswith(("underwent ", "Outcomes of ", " after ")))
            assert in_procedure_slot == procedure, (m, doc.text[max(0, m.start - 40):m.end + 40])
            seen[procedure] += 1
    assert seen[True] >= 5 and seen[False] >= 5, seen
