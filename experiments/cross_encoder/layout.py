"""The names of the files cross_encoder reads and writes, spelled once for the writer and its readers.

    <medmentions_dir>/corpus_pubtator.txt(.gz), corpus_pubtator_pmids_{trng,dev,test}.txt   (MedMentions)
    <paths.prepared>/concepts.jsonl, mentions.jsonl, missing.json, summary.json     (prepare)
    <paths.index>/names.faiss, names.jsonl, index.json                              (index)
    <paths.mined>/candidates.npz, pairs_<split>.jsonl, mining.json                  (mine)
    <export --out>/calibration.json, README.md, and the transformers model files   (export)
    <results>/calibration.json, evaluation_results.json, besides the suite's files  (evaluate)

Nothing here imports anything: a module that needs a name does not load the module that writes it.
"""

CORPUS_NAME = "corpus_pubtator.txt"
SPLIT_FILES: dict[str, str] = {
    "train": "corpus_pubtator_pmids_trng.txt",
    "dev": "corpus_pubtator_pmids_dev.txt",
    "test": "corpus_pubtator_pmids_test.txt",
}

CONCEPTS_FILE = "concepts.jsonl"
MENTIONS_FILE = "mentions.jsonl"
# The two tables; summary.json records their checksums so that readers refuse a mixed pair.
TABLES = (CONCEPTS_FILE, MENTIONS_FILE)
MISSING_FILE = "missing.json"
SUMMARY_FILE = "summary.json"

INDEX_FILE = "names.faiss"
NAMES_FILE = "names.jsonl"
META_FILE = "index.json"

CANDIDATES_FILE = "candidates.npz"
MINING_FILE = "mining.json"

CALIBRATION_FILE = "calibration.json"
MODEL_CARD = "README.md"
EVALUATION_FILE = "evaluation_results.json"


def pairs_file(split: str) -> str:
    """The mined pairs of one pair split (records.PAIR_SPLITS)."""
    return f"pairs_{split}.jsonl"
