"""`prepare`: MedMentions and UMLS (real or synthetic) → concepts.jsonl and mentions.jsonl.

prepared/
  concepts.jsonl   one loaded UMLS concept a line: cui, preferred, names, types (sorted by CUI)
  mentions.jsonl   one mention a line, in corpus order: split, pmid, start, end, text, types, cui (as
                   annotated) and gold (the loaded concept it resolves to through the history, or null)
  missing.json     the mentions whose CUI is not loaded, and why (retired, deleted, ambiguous, not loaded)
  summary.json     counts per split, the UMLS loader's statistics, semantic type names
  models/          tiny local BERTs standing in for SapBERT (smoke profile only)

The other steps read the tables through readers.py, which checks them against summary.json.
"""

import argparse
import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from experiments.cross_encoder import medmentions, pair_text
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.layout import (
    CONCEPTS_FILE,
    CORPUS_NAME,
    MENTIONS_FILE,
    MISSING_FILE,
    SUMMARY_FILE,
    TABLES,
)
from experiments.cross_encoder.records import SPLITS, MentionRecord
from experiments.cross_encoder.synthetic import write_synthetic_medmentions, write_synthetic_umls
from experiments.cross_encoder.umls import load_umls, missing_report, resolve_cui
from medrepro import atomic, repro
from medrepro.errors import ConfigError, DataError
from medrepro.tiny import build_tiny_bert

_log = logging.getLogger(__name__)


def _corpus_file(directory: Path) -> Path:
    for name in (CORPUS_NAME, CORPUS_NAME + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"no {CORPUS_NAME}(.gz) in {directory}: point data.medmentions_dir at "
                    "MedMentions' full/data or st21pv/data folder")


def _sources(cfg: CrossEncoderConfig, out: Path) -> tuple[Path, Path, Path]:
    """(corpus file, split directory, UMLS directory), writing the synthetic twins first if asked."""
    if cfg.data.source == "synthetic":
        umls_dir = write_synthetic_umls(out / "synthetic" / "umls", cfg.data.synthetic_concepts, cfg.seed)
        corpus = write_synthetic_medmentions(out / "synthetic" / "medmentions", umls_dir,
                                             cfg.data.synthetic_documents, cfg.seed)
        return corpus, corpus.parent, umls_dir
    for key in ("medmentions_dir", "umls_dir"):
        if not getattr(cfg.data, key):
            raise ConfigError(f"data.{key} is empty: set it for data.source=medmentions (data.{key}=/data/...)")
    root = Path(cfg.data.medmentions_dir)
    if cfg.data.checksums:
        repro.verify_sha256_manifest(Path(cfg.data.checksums), root)
    return _corpus_file(root), Path(cfg.data.split_dir or root), Path(cfg.data.umls_dir)


def prepare(cfg: CrossEncoderConfig, args: argparse.Namespace | None = None) -> Path:
    out = Path(cfg.paths.prepared)
    corpus, split_dir, umls_dir = _sources(cfg, out)
    pmids = medmentions.read_split_pmids(split_dir)
    by_split = medmentions.split_documents(medmentions.read_pubtator(corpus), pmids)
    mentions = [(split, doc, m) for split in SPLITS for doc in by_split[split] for m in doc.mentions]
    if not mentions:
        raise DataError(f"{corpus} has no mention in the documents of the split files in {split_dir}")

    keep = {m.cui for _, _, m in mentions} if cfg.data.concepts == "corpus" else None
    umls = load_umls(umls_dir, cfg.data.sabs or None, cfg.data.keep_suppressed, keep)
    if not umls.concepts:
        raise DataError(f"no English concept was loaded from {umls_dir} (sabs={cfg.data.sabs}); check the "
                        "release and data.sabs")
    records = [MentionRecord(split, m.pmid, m.start, m.end, m.text, m.types, m.cui, resolve_cui(m.cui, umls),
                             *pair_text.context(doc.text, m.start, m.end, cfg.data.context_words))
               for split, doc, m in mentions]

    if cfg.data.source == "synthetic":
        corpus_texts = [doc.text for docs in by_split.values() for doc in docs]
        # The vocabulary covers what the cross-encoder reads: names with their semantic types, and text.
        names = [pair_text.candidate_input(name, [umls.type_names.get(t, t) for t in concept.types])
                 for concept in umls.concepts.values() for name in concept.names]
        for role, enc in (("biencoder", cfg.biencoder), ("cross_encoder", cfg.cross_encoder)):
            if enc.tiny is not None:
                build_tiny_bert(enc.path, names + corpus_texts, enc.tiny)
                print(f"built tiny {role} at {enc.path}")

    report = missing_report((m for _, _, m in mentions), umls)
    _check_linkable(records, by_split, report, umls_dir)
    atomic.write_text(out / CONCEPTS_FILE, "".join(
        json.dumps(asdict(umls.concepts[cui])) + "\n" for cui in sorted(umls.concepts)))
    atomic.write_text(out / MENTIONS_FILE, "".join(json.dumps(asdict(r)) + "\n" for r in records))
    atomic.write_json(out / MISSING_FILE, report)
    summary = {
        "source": cfg.data.source,
        "corpus": str(corpus),
        "umls": str(umls_dir),
        "documents": {s: len(by_split[s]) for s in SPLITS},
        "mentions": dict(Counter(r.split for r in records)),
        "mentions_linkable": dict(Counter(r.split for r in records if r.gold is not None)),
        "concepts": len(umls.concepts),
        "names": sum(len(c.names) for c in umls.concepts.values()),
        "missing": {"mentions": report["missing_mentions"], "by_reason": report["by_reason"]},
        "umls_stats": asdict(umls.stats),
        "type_names": umls.type_names,
    }
    # Written last, with the checksums of the tables: the readers check that both come from this run.
    summary["files"] = {name: repro.sha256_file(out / name) for name in TABLES}
    atomic.write_json(out / SUMMARY_FILE, summary)
    print(json.dumps({k: summary[k] for k in ("documents", "mentions", "mentions_linkable", "concepts", "names",
                                              "missing")}))
    return out


def _check_linkable(records: list[MentionRecord], by_split: dict, report: dict, umls_dir: Path) -> None:
    """Stop when nothing is left to train on; warn about a split without documents or linkable mentions."""
    linkable = Counter(r.split for r in records if r.gold is not None)
    if not linkable["train"]:
        raise DataError(f"no train mention links to a concept loaded from {umls_dir} ({report['missing_mentions']} of "
                        f"{len(records)} mentions missing: {report['by_reason']}): check data.umls_dir, data.sabs and "
                        "the release (MedMentions was annotated against UMLS 2017AA; newer releases need MRCUI.RRF)")
    for split in SPLITS:
        if not by_split[split]:
            _log.warning("the %s split has no document: its split file lists no PMID of the corpus", split)
        elif not linkable[split]:
            _log.warning("no %s mention links to a loaded concept (%d mentions, see missing.json)", split,
                         sum(r.split == split for r in records))

