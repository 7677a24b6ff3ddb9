import gzip
import logging
from pathlib import Path

import pytest

from experiments.cross_encoder.layout import SPLIT_FILES
from experiments.cross_encoder.medmentions import read_pubtator, read_split_pmids, split_documents
from experiments.cross_encoder.records import Document, Mention
from medrepro.errors import DataError

TITLE = "DCTN4 as a modifier of chronic Pseudomonas aeruginosa infection in cystic fibrosis"
ABSTRACT = "Pseudomonas aeruginosa (Pa) infection in cystic fibrosis (CF) patients is associated with worse disease."
# Offsets count into TITLE + " " + ABSTRACT; the second block uses ST21pv's `UMLS:` prefix.
CORPUS = f"""25763772|t|{TITLE}
25763772|a|{ABSTRACT}
25763772\t0\t5\tDCTN4\tT116,T123\tC4308010
25763772\t23\t63\tchronic Pseudomonas aeruginosa infection\tT047\tC0854135
25763772\t124\t139\tcystic fibrosis\tT047\tC0010674

31000001|t|Acute renal failure after surgery
31000001|a|We studied ARF in 40 patients.
31000001\t0\t19\tAcute renal failure\tT047\tUMLS:C0022660
31000001\t45\t48\tARF\tT047\tUMLS:C0022660

"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_blocks_with_type_lists_and_prefixed_cuis(tmp_path: Path) -> None:
    docs = list(read_pubtator(_write(tmp_path / "corpus_pubtator.txt", CORPUS)))
    assert [doc.pmid for doc in docs] == ["25763772", "31000001"]
    first = docs[0]
    assert (first.title, first.abstract) == (TITLE, ABSTRACT)
    assert first.text == f"{TITLE} {ABSTRACT}"
    assert first.mentions[0] == Mention("25763772", 0, 5, "DCTN4", ("T116", "T123"), "C4308010")
    assert first.text[124:139] == "cystic fibrosis" and first.mentions[2].start == 124
    assert [mention.cui for mention in docs[1].mentions] == ["C0022660", "C0022660"]
    assert docs[1].mentions[1].text == "ARF"


def test_gzip_and_windows_line_endings_read_the_same(tmp_path: Path) -> None:
    plain = list(read_pubtator(_write(tmp_path / "plain.txt", CORPUS)))
    compressed = tmp_path / "corpus_pubtator.txt.gz"
    compressed.write_bytes(gzip.compress(CORPUS.encode("utf-8")))
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(CORPUS.replace("\n", "\r\n").encode("utf-8"))
    assert list(read_pubtator(compressed)) == plain
    assert list(read_pubtator(crlf)) == plain


def test_last_block_needs_no_trailing_blank_line(tmp_path: Path) -> None:
    docs = list(read_pubtator(_write(tmp_path / "c.txt", CORPUS.rstrip("\n"))))
    assert len(docs[1].mentions) == 2


def test_reading_streams_one_block_at_a_time(tmp_path: Path) -> None:
    # The defect in the second block is found only when the reader gets there.
    broken = CORPUS.replace("31000001\t45\t48\tARF", "31000001\t45\t48\tXYZ")
    documents = read_pubtator(_write(tmp_path / "c.txt", broken))
    assert next(documents).pmid == "25763772"
    with pytest.raises(DataError):
        next(documents)


def test_offset_mismatch_names_file_line_pmid_and_both_strings(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.txt", CORPUS.replace("\t0\t5\tDCTN4", "\t1\t6\tDCTN4"))
    with pytest.raises(DataError, match=r"PMID 25763772 at .*c\.txt:3 says 'DCTN4' but offsets 1-6 select 'CTN4 '"):
        list(read_pubtator(path))


def test_offsets_beyond_the_text_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.txt", CORPUS.replace("\t45\t48\tARF", "\t450\t453\tARF"))
    with pytest.raises(DataError, match=r"c\.txt:10 are outside its text"):
        list(read_pubtator(path))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("\tT047\tC0854135", "\tT047", r"c\.txt:4 has 5 tab-separated fields"),
        ("25763772\t0\t5", "25763772\tzero\t5", r"offsets 'zero' and '5' of PMID 25763772 at .*c\.txt:3"),
        ("25763772\t0\t5", "25763773\t0\t5", r"mention at .*c\.txt:3 names PMID 25763773 inside the block"),
        ("\tC4308010", "\tD012711", r"entity id 'D012711' of PMID 25763772 at .*c\.txt:3 is not a UMLS CUI"),
        ("25763772|a|", "25763779|a|", r"abstract line at .*c\.txt:2 names PMID 25763779"),
        ("\n\n31000001|t|", "\n31000001|t|", r"title line of PMID 31000001 at .*c\.txt:6 is inside the block"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in CORPUS
    path = _write(tmp_path / "c.txt", CORPUS.replace(old, new, 1))
    with pytest.raises(DataError, match=message):
        list(read_pubtator(path))


def test_block_without_abstract_is_rejected(tmp_path: Path) -> None:
    no_abstract = "31000002|t|A title alone\n\n"
    with pytest.raises(DataError, match=r"PMID 31000002 starting at .*c\.txt:1 has no abstract line"):
        list(read_pubtator(_write(tmp_path / "c.txt", no_abstract)))


def test_mentions_without_title_or_abstract_are_rejected(tmp_path: Path) -> None:
    orphan = "31000003\t0\t3\tARF\tT047\tC0022660\n"
    with pytest.raises(DataError, match=r"c\.txt:1 comes in a block without a title or abstract"):
        list(read_pubtator(_write(tmp_path / "c.txt", orphan)))


def test_duplicate_pmid_is_rejected(tmp_path: Path) -> None:
    second = CORPUS.split("\n\n")[0]
    with pytest.raises(DataError, match="PMID 25763772 appears a second time"):
        list(read_pubtator(_write(tmp_path / "c.txt", f"{CORPUS}{second}\n")))


def test_missing_corpus_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot open"):
        list(read_pubtator(tmp_path / "absent.txt"))


def _write_splits(directory: Path, splits: dict[str, list[str]]) -> None:
    for split, pmids in splits.items():
        (directory / SPLIT_FILES[split]).write_text("".join(f"{pmid}\n" for pmid in pmids))


def test_read_split_pmids(tmp_path: Path) -> None:
    _write_splits(tmp_path, {"train": ["1", "2", ""], "dev": ["3"], "test": ["4", "5"]})
    assert read_split_pmids(tmp_path) == {"train": {"1", "2"}, "dev": {"3"}, "test": {"4", "5"}}


def test_missing_split_file_is_named(tmp_path: Path) -> None:
    _write_splits(tmp_path, {"train": ["1"], "test": ["2"]})
    with pytest.raises(DataError, match=r"corpus_pubtator_pmids_dev\.txt is missing.*set data\.split_dir"):
        read_split_pmids(tmp_path)


def test_overlapping_splits_are_rejected(tmp_path: Path) -> None:
    _write_splits(tmp_path, {"train": ["1", "2"], "dev": ["3"], "test": ["2", "4"]})
    with pytest.raises(DataError, match="PMID 2 is in both the train and the test split"):
        read_split_pmids(tmp_path)


def test_split_file_with_a_non_pmid_line_is_rejected(tmp_path: Path) -> None:
    _write_splits(tmp_path, {"train": ["1", "25763772|t|title"], "dev": ["3"], "test": ["4"]})
    with pytest.raises(DataError, match=r"pmids_trng\.txt:2 holds"):
        read_split_pmids(tmp_path)


def _document(pmid: str, n_mentions: int) -> Document:
    mentions = tuple(Mention(pmid, 0, 3, "ARF", ("T047",), "C0022660") for _ in range(n_mentions))
    return Document(pmid, "ARF", "text", mentions)


def test_split_documents_keeps_documents_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    docs = [_document("1", 3), _document("2", 1), _document("3", 2), _document("9", 1)]
    with caplog.at_level(logging.WARNING):
        grouped = split_documents(iter(docs), {"train": {"1", "3"}, "dev": {"2"}, "test": {"4"}})
    assert {split: [doc.pmid for doc in group] for split, group in grouped.items()} == {
        "train": ["1", "3"],
        "dev": ["2"],
        "test": [],
    }
    assert [len(doc.mentions) for doc in grouped["train"]] == [3, 2]
    messages = [record.getMessage() for record in caplog.records]
    assert any("1 documents are in no split" in message and "9" in message for message in messages)
    assert any("1 split PMIDs name no document" in message for message in messages)


def test_split_documents_rejects_overlapping_splits() -> None:
    with pytest.raises(DataError, match="PMID 1 is in both"):
        split_documents([_document("1", 1)], {"train": {"1"}, "dev": {"1"}, "test": set()})
