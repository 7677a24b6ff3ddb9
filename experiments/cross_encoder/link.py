"""`link`: mentions in, ranked CUIs with calibrated confidence out (one JSON line per mention).

Input is a PubTator file (its mention lines give the spans; any CUIs in it are ignored) or JSON lines
`{"id": "...", "text": "...", "spans": [[start, end], ...]}` with 0-based, end-exclusive offsets.
Each mention's candidates come from the bi-encoder index and are re-ranked by the exported
cross-encoder, which reads the mention in its context and each candidate name with its semantic
types (pair_text.py; the context comes from the document text), by its logit plus the retrieval
weight times the standardised cosine (scoring.py);
`confidence` is the exported model's probability, which carries its Platt calibration (export.py).
The model (`--model`) is a directory `medrepro cross_encoder export --out` wrote.
"""

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.cross_encoder import model as cross
from experiments.cross_encoder import pair_text, scoring
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.medmentions import read_pubtator, text_lines
from experiments.cross_encoder.readers import concept_type_names, read_calibration, read_concepts
from experiments.cross_encoder.retrieval import BiEncoder, read_index
from medrepro import atomic
from medrepro.calibration import sigmoid
from medrepro.device import default_device
from medrepro.errors import DataError


@dataclass(frozen=True)
class Span:
    doc: str
    start: int
    end: int
    text: str
    left: str  # context words (pair_text.context)
    right: str


def read_spans(path: Path, context_words: int) -> list[Span]:
    """Spans from PubTator (told by its `PMID|t|` first line) or from JSON lines, each with up to
    `context_words` words of its document on either side."""
    first = next((line for _, line in text_lines(path) if line.strip()), "")
    if "|t|" in first.split("\t")[0]:
        return [Span(m.pmid, m.start, m.end, m.text, *pair_text.context(doc.text, m.start, m.end, context_words))
                for doc in read_pubtator(path) for m in doc.mentions]
    return list(_json_spans(path, context_words))


def _json_spans(path: Path, context_words: int) -> Iterator[Span]:
    for number, line in text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
            doc, text, spans = str(record["id"]), record["text"], record["spans"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"line {where} is not a JSON object with id, text and spans ({e}); expected "
                            '{"id": "doc1", "text": "...", "spans": [[start, end], ...]}') from None
        if not isinstance(text, str) or not isinstance(spans, list):
            raise DataError(f"line {where}: text must be a string and spans a list of [start, end] pairs, got "
                            f"{type(text).__name__} and {type(spans).__name__}")
        for span in spans:
            # bool is an int in Python: [true, 2] must not pass as a span.
            if (not isinstance(span, list) or len(span) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)
                    or not 0 <= span[0] < span[1] <= len(text)):
                raise DataError(f"line {where}: span {span!r} is not [start, end] with 0 <= start < end <= "
                                f"{len(text)} (the text's length)")
            yield Span(doc, span[0], span[1], text[span[0]:span[1]],
                       *pair_text.context(text, span[0], span[1], context_words))


def link_command(cfg: CrossEncoderConfig, args: argparse.Namespace) -> int:
    """`link`: with the exported model `--model`."""
    if not args.model.is_dir():
        raise DataError(f"no exported cross-encoder in {args.model}: run `medrepro cross_encoder export --out "
                        f"{args.model}` after training, or pass the --model DIR an export wrote")
    return link(cfg, args.input, args.out, args.model, args.top)


def link(cfg: CrossEncoderConfig, inputs: Path, out: Path, model_dir: Path, top: int) -> int:
    spans = read_spans(inputs, cfg.data.context_words)
    if not spans:
        raise DataError(f"{inputs} holds no mention to link")
    concepts = read_concepts(cfg.paths.prepared)
    types = concept_type_names(cfg.paths.prepared, concepts)
    index = read_index(cfg.paths.index, concepts, cfg.index)
    encoder = BiEncoder.load(cfg.biencoder.path, cfg.index.max_length, cfg.index.batch_size)
    model, tokenizer = cross.load(model_dir)
    weight = read_calibration(model_dir)["retrieval_weight"]
    model.to(default_device())

    cand, rows, bi_scores = index.candidates(encoder.encode([s.text for s in spans]), cfg.eval.rerank_top_k)
    valid = cand >= 0
    pairs = [(pair_text.mention_input(s.text, s.left, s.right),
              pair_text.candidate_input(index.names[r], types[c]))
             for s, rs, cs, ok in zip(spans, rows, cand, valid, strict=True)
             for r, c in zip(rs[ok], cs[ok], strict=True)]
    logits = np.full(cand.shape, -np.inf)
    logits[valid] = cross.pair_logits(model, tokenizer, pairs, cfg.eval.batch_size, cfg.max_length)
    scored = scoring.Candidates(np.arange(len(spans)), np.array([s.doc for s in spans]), cand,
                                np.where(valid, bi_scores, -np.inf), logits, np.full(len(spans), -1))
    combined = scored.combined(weight)

    lines = []
    for i, span in enumerate(spans):
        order = np.argsort(-combined[i], kind="stable")[: min(top, int(valid[i].sum()))]
        ranked = [{"cui": concepts[cand[i, j]].cui, "name": concepts[cand[i, j]].preferred,
                   "matched_name": index.names[rows[i, j]],
                   "confidence": round(float(sigmoid(logits[i, j])), 6),
                   "linking_score": round(float(combined[i, j]), 6),
                   "biencoder_score": round(float(bi_scores[i, j]), 6)} for j in order]
        lines.append(json.dumps({"id": span.doc, "start": span.start, "end": span.end, "mention": span.text,
                                 "candidates": ranked}) + "\n")
    atomic.write_text(out, "".join(lines))
    print(f"linked {len(spans)} mentions from {inputs} → {out}")
    return len(spans)
