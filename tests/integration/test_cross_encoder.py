"""The cross_encoder pipeline on synthetic data (the `reproduced` smoke run): it learns, mines
correctly; its run exports and links; and it fails loudly on bad input."""

import hashlib
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.cross_encoder.pair_text import segments
from experiments.cross_encoder.records import Pair
from medrepro.rundir import RunDir
from tests.integration.conftest import final_weights, kill_when, medrepro, process_env

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def smoke(reproduced) -> Path:
    """The work directory of the verified smoke pipeline."""
    return reproduced.workdir


@pytest.fixture(scope="module")
def exported(smoke, tmp_path_factory) -> Path:
    """`medrepro cross_encoder export` of the smoke run's best checkpoint, out of the run directory (which
    stays as DVC recorded it)."""
    out = tmp_path_factory.mktemp("exported") / "model"
    medrepro(["cross_encoder", "export", "--out", str(out)], smoke)
    return out


def results(smoke: Path) -> Path:
    return smoke / "results" / "cross_encoder" / "sapbert"


def test_smoke_learns_far_above_a_trivial_classifier(smoke):
    m = json.loads((results(smoke) / "details.json").read_text())
    # Answering "match" for every pair gives F1 = 2p / (1 + p) at positive rate p (about 0.2 here); a
    # constant score gives PR-AUC p. Both are reported beside the model's.
    trivial = m["baseline/all_positive/f1"]
    assert trivial == pytest.approx(2 * m["positive_rate"] / (1 + m["positive_rate"]))
    assert m["baseline/prevalence/pr_auc"] == m["positive_rate"]
    # The whole interval (documents resampled) clears the trivial F1 by half of it again.
    assert m["f1_ci_low"] > 1.5 * trivial, m
    # Chance is 0.5; the tiny model, trained from scratch on pairs that carry context, reaches about 0.8.
    assert m["roc_auc"] > 0.75 and m["pr_auc"] > 3 * m["baseline/prevalence/pr_auc"], m
    assert 0 <= m["ece"] <= m["mce"] <= 1
    # Re-ranking the top 20 cannot beat retrieving the gold concept at all.
    assert m["linking/reranked_acc_at_1"] <= m["linking/recall_at_20"]
    for name in ("reliability", "roc", "pr", "linking"):
        assert (results(smoke) / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = json.loads((results(smoke) / "evaluation_results.json").read_text())
    assert set(evaluation["test_pairs"]) >= {"uncalibrated", "platt", "temperature", "by_kind"}
    assert "sapbert | synthetic" in (smoke / "results" / "RESULTS.md").read_text()
    # ECE comes with its bins' counts (equal-width and equal-mass), on pairs and on linking top-1.
    platt = evaluation["test_pairs"]["platt"]
    for binning in ("bins_equal_width", "bins_equal_mass"):
        assert sum(b["count"] for b in platt[binning]) == len(y_test_pairs(smoke))
    counts = [b["count"] for b in platt["bins_equal_mass"]]
    assert max(counts) - min(counts) <= 1
    top1 = evaluation["linking"]["top1_calibration"]
    assert sum(b["count"] for b in top1["bins_equal_width"]) == m["linking/mentions"]
    assert 0 <= m["linking/top1_ece"] <= 1 and 0 <= m["platt/ece_adaptive"] <= 1


def y_test_pairs(smoke: Path) -> list[int]:
    pairs = (smoke / "data" / "cross_encoder" / "mined" / "pairs_test.jsonl").read_text().splitlines()
    return [json.loads(line)["label"] for line in pairs]


def test_reranking_beats_the_bi_encoder_on_the_same_mentions(smoke):
    """The seed's claim: re-ranking improves linking. The paired interval of the acc@1 difference (the
    same documents resampled for both) lies above zero, and the fine-tuned cross-encoder beats its
    zero-shot start."""
    m = json.loads((results(smoke) / "details.json").read_text())
    assert m["linking/reranked_minus_biencoder_ci_low"] > 0, m
    assert m["linking/reranked_acc_at_1"] > m["linking/biencoder_acc_at_1"]
    # The synthetic mentions are not a string-matching task: the retriever alone is far from perfect.
    assert m["linking/biencoder_acc_at_1"] < 0.8
    assert m["fine_tuned/acc_at_1"] > m["zero_shot/acc_at_1"]
    for row in ("zero_shot", "fine_tuned"):
        assert {f"{row}/{k}" for k in ("high_confidence_share", "mean_top_score", "mean_margin")} <= m.keys()


def test_intervals_resample_the_test_documents(smoke):
    """The bootstrap unit is the document (PMID), carried from the PubTator reader through prepare: the
    units counted are the test documents with a linkable mention, each holding several mentions."""
    m = json.loads((results(smoke) / "details.json").read_text())
    mentions = [json.loads(line) for line in
                (smoke / "data" / "cross_encoder" / "prepared" / "mentions.jsonl").read_text().splitlines()]
    linkable = [r for r in mentions if r["split"] == "test" and r["gold"] is not None]
    documents = {r["pmid"] for r in linkable}
    assert m["linking/mentions"] == len(linkable) and m["linking/documents"] == len(documents)
    assert m["n_documents"] == len(documents) and len(linkable) >= 3 * len(documents)
    evaluation = json.loads((results(smoke) / "evaluation_results.json").read_text())
    assert evaluation["linking"]["ci_unit"] == evaluation["test_pairs"]["f1_ci_unit"] == "document"


def test_context_and_type_settle_names_shared_across_types(smoke):
    """Mentions whose string names concepts of different semantic types ("RI": a renal disorder or renal
    imaging) are a coin toss for the bi-encoder, which reads the string alone; the cross-encoder reads
    the words around the mention and the candidates' types, and links them better on the same mentions."""
    m = json.loads((results(smoke) / "details.json").read_text())
    assert m["linking/ambiguous_mentions"] >= 20, m
    assert m["linking/ambiguous_reranked_minus_biencoder_ci_low"] > 0, m
    assert m["linking/ambiguous_biencoder_acc_at_1"] < m["linking/biencoder_acc_at_1"]


def test_mined_pairs_never_use_the_gold_concept_as_a_negative(smoke):
    mined = smoke / "data" / "cross_encoder" / "mined"
    report = json.loads((mined / "mining.json").read_text())
    with np.load(mined / "candidates.npz") as c:
        candidates, scores = c["concepts"], c["scores"]
    concepts = [json.loads(line) for line in
                (smoke / "data" / "cross_encoder" / "prepared" / "concepts.jsonl").read_text().splitlines()]
    cuis = [c["cui"] for c in concepts]
    names_of = {c["cui"]: c["names"] for c in concepts}
    threshold, top_k = report["settings"]["hard_threshold"], report["settings"]["hard_top_k"]
    for split in ("train", "dev", "calibration", "test"):
        by_mention = defaultdict(list)
        for line in (mined / f"pairs_{split}.jsonl").read_text().splitlines():
            pair = json.loads(line)
            by_mention[pair["mention"]].append(pair)
        for mention, pairs in by_mention.items():
            positives = [p for p in pairs if p["label"] == 1]
            assert len(positives) == 1 and positives[0]["kind"] == "positive"
            negatives = [p["cui"] for p in pairs if p["label"] == 0]
            assert positives[0]["cui"] not in negatives and len(set(negatives)) == len(negatives)
            # No (mention, name) pair is labelled both ways: no negative under a name of the gold concept.
            gold_names = {n.casefold() for n in names_of[positives[0]["cui"]]}
            assert not [p for p in pairs if p["label"] == 0 and p["name"].casefold() in gold_names]
            for p in pairs:
                if p["kind"] == "hard":
                    j = [cuis[k] if k >= 0 else None for k in candidates[mention, :top_k]].index(p["cui"])
                    assert scores[mention, j] >= threshold
        mix = report["mix"][split]
        assert sum(mix.values()) == pytest.approx(1.0, abs=1e-3) and mix["hard"] > 0
    assert set(report["recall"]["test"]) == {"recall_at_1", "recall_at_5", "recall_at_20", "recall_at_64"}


def test_export_scores_the_same_in_transformers_and_sentence_transformers(smoke, exported):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pairs = [segments(Pair(**json.loads(line))) for line in
             (smoke / "data" / "cross_encoder" / "mined" / "pairs_test.jsonl").read_text().splitlines()[:300]]
    model = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    with torch.inference_mode():
        batch = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], padding=True, truncation=True,
                          return_tensors="pt")
        ours = torch.sigmoid(model(**batch).logits[:, 0]).numpy()
    theirs = CrossEncoder(str(exported), device="cpu").predict(pairs, batch_size=64, show_progress_bar=False)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert ours.std() > 0.05  # a trained model, not a constant


EXPORT_CHECK = """
import json, sys
import numpy as np
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model_dir, check = sys.argv[1], json.load(open(sys.argv[2]))["export_check"]["pairs"]
pairs = [(p["first"], p["second"]) for p in check]
st = CrossEncoder(model_dir, device="cpu").predict(pairs, batch_size=16, show_progress_bar=False)
model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
tokenizer = AutoTokenizer.from_pretrained(model_dir)
with torch.inference_mode():
    batch = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], padding=True, truncation=True, return_tensors="pt")
    hf = torch.sigmoid(model(**batch).logits[:, 0]).numpy()
print(json.dumps({"st": st.tolist(), "hf": hf.tolist(), "label": model.config.id2label[0]}))
"""


def test_export_returns_the_evaluated_calibrated_probabilities_in_a_fresh_process(smoke, exported, tmp_path):
    """Copied to another directory and loaded there, with nothing of the repository on the path, the
    exported model gives the probabilities the evaluation computed from the raw checkpoint and the
    Platt parameters it fitted."""
    model_dir = shutil.copytree(exported, tmp_path / "copied")
    evaluation = results(smoke) / "evaluation_results.json"
    env = {k: v for k, v in process_env().items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(model_dir), str(evaluation)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = [p["probability"] for p in json.loads(evaluation.read_text())["export_check"]["pairs"]]
    np.testing.assert_allclose(got["st"], expected, atol=1e-5)
    np.testing.assert_allclose(got["hf"], expected, atol=1e-5)
    assert got["label"] == "match" and np.std(expected) > 0.05
    for path in model_dir.iterdir():
        assert path.stat().st_mode & 0o044 == 0o044, path  # readable by group and others
    calibration = json.loads((model_dir / "calibration.json").read_text())
    assert calibration["platt"]["a"] > 0 and calibration["folded_into_weights"] == "platt"
    # The same calibration as the evaluation's: one checkpoint, fitted once in each step.
    assert calibration == json.loads((results(smoke) / "calibration.json").read_text())
    card = (model_dir / "README.md").read_text()
    assert "CrossEncoder(" in card and "re-ranked acc@1" in card and "## Limits" in card


def test_link_ranks_candidates_with_calibrated_confidence(smoke, exported, tmp_path):
    corpus = smoke / "data" / "cross_encoder" / "prepared" / "synthetic" / "medmentions" / "corpus_pubtator.txt"
    first_doc = corpus.read_text().split("\n\n")[0] + "\n\n"
    (tmp_path / "doc.txt").write_text(first_doc)
    out = tmp_path / "linked.jsonl"
    medrepro(["cross_encoder", "link", "--input", str(tmp_path / "doc.txt"), "--out", str(out), "--top", "3",
              "--model", str(exported)], smoke)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(first_doc.strip().splitlines()) - 2
    for line in lines:
        # Ranked by the linking score (cross-encoder logit + weighted retrieval cosine), each with the
        # exported model's calibrated probability.
        scores = [c["linking_score"] for c in line["candidates"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert all(0 <= c["confidence"] <= 1 for c in line["candidates"])
        assert line["candidates"][0]["cui"].startswith("C")


def test_export_and_link_before_their_inputs_are_one_line(smoke, tmp_path):
    proc = medrepro(["cross_encoder", "export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "model")],
                    smoke, check=False)
    assert proc.returncode == 2 and "holds no finished run" in proc.stderr and "--checkpoint PATH" in proc.stderr
    (tmp_path / "doc.jsonl").write_text('{"id": "d", "text": "renal failure", "spans": [[0, 13]]}\n')
    proc = medrepro(["cross_encoder", "link", "--input", str(tmp_path / "doc.jsonl"), "--out",
                     str(tmp_path / "linked.jsonl"), "--model", str(tmp_path / "model")], smoke, check=False)
    assert proc.returncode == 2 and "run `medrepro cross_encoder export --out" in proc.stderr
    assert not (tmp_path / "model").exists() and not (tmp_path / "linked.jsonl").exists()


def test_prepare_index_mine_are_identical_across_processes(tmp_path):
    script = ("import sys; from medrepro.suite.cli import main\n"
              "args = ['data.synthetic_documents=40', 'data.synthetic_concepts=120']\n"
              "for command in ('prepare', 'index', 'mine'):\n"
              "    assert main(['cross_encoder', command, *args]) == 0\n")
    digests = []
    for hash_seed in ("1", "2"):
        work = tmp_path / hash_seed
        work.mkdir()
        subprocess.run([sys.executable, "-c", script], cwd=work, env=process_env(PYTHONHASHSEED=hash_seed),
                       check=True, capture_output=True)
        mined = work / "data" / "cross_encoder" / "mined"
        files = sorted([*mined.glob("pairs_*.jsonl"), mined / "candidates.npz",
                        work / "data" / "cross_encoder" / "index" / "names.faiss"])
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    assert digests[0] == digests[1]


def test_missing_real_data_is_one_clear_line(tmp_path):
    proc = medrepro(["cross_encoder", "prepare", "data.source=medmentions"], tmp_path, check=False)
    assert proc.returncode == 2 and "data.medmentions_dir is empty" in proc.stderr
    proc = medrepro(["cross_encoder", "prepare", "data.source=medmentions", f"data.medmentions_dir={tmp_path}",
                     f"data.umls_dir={tmp_path}"], tmp_path, check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0 and "corpus_pubtator.txt" in err
    proc = medrepro(["cross_encoder", "mine"], tmp_path, check=False)
    assert proc.returncode == 2 and "run `medrepro cross_encoder prepare` first" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_killed_training_resumes_to_the_uninterrupted_weights(smoke):
    """SIGKILL after a mid-epoch checkpoint at step 8, then `--resume latest`: bitwise-equal final
    weights, so the pair order, tokenisation and RNG streams continue exactly."""
    overrides = ["train.epochs=0.03", "train.eval_every_epochs=0.015", "train.save_every_steps=4",
                 "train.log_every_steps=1", "train.early_stopping_patience=0", "train.tracking.tensorboard=false"]
    reference, killed = smoke / "runs" / "reference", smoke / "runs" / "killed"
    medrepro(["cross_encoder", "train", "--out", str(reference), *overrides], smoke)
    kill_when(["cross_encoder", "train", "--out", str(killed), *overrides], smoke,
              killed / "checkpoints" / "step-00000008.pt")
    assert not (killed / "final.pt").exists(), "the run finished before the kill; the test proves nothing"
    medrepro(["cross_encoder", "train", "--out", str(killed), "--resume", "latest", *overrides], smoke)
    expected, got = final_weights(reference), final_weights(killed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # Training only trains: the run is complete, and calibration and export (once `model/` in the run)
    # are steps of their own.
    assert RunDir(killed).is_complete() and not (killed / "model").exists()


def test_bench_reports_ratios_and_equal_scores(smoke, tmp_path):
    out = tmp_path / "bench.json"
    # The UMLS-scale and ×100 parts at toy sizes: what is checked here is the wiring, not the figures.
    medrepro(["cross_encoder", "bench", "--out", str(out), "bench.index_sizes=[3000]", "bench.index_dim=64",
              "bench.index_queries=100", "bench.approximate_max_names=3000", "bench.mine_scales=[1,2]",
              "bench.repeats=3", "bench.index_kinds=[ivf_fp16,hnsw_pca16_refine]", "bench.hnsw_ef_search=[16,64]",
              "bench.ivf_nprobe=[4]"], smoke)
    result = json.loads(out.read_text())
    rates = result["rates"]
    assert result["setting"]["pairs"] > 0 and rates["score_max_abs_difference"] < 1e-5
    assert result["ratios"]["score_ratio"] > 0 and result["ratios"]["search_ratio"] > 0
    # The scoring ratio is the median of three interleaved rounds, reported with its spread.
    score = result["spread"]["score_ratio"]
    assert len(score["rounds"]) == 3
    assert score["min"] <= result["ratios"]["score_ratio"] == score["median"] <= score["max"]
    assert rates["candidates_mentions_per_s"] > 0 and rates["mining_mentions_per_s"] > 0
    assert [(r["kind"], r["value"]) for r in rates["index"]] == [
        ("flat", 0), ("ivf_fp16", 4), ("hnsw_pca16_refine", 16), ("hnsw_pca16_refine", 64)]
    shown = rates["index_chosen"] or max((r for r in rates["index"][1:] if r["recall_at_64"] >= 0.99),
                                         key=lambda r: r["speedup_min"], default=None)
    if shown is not None:  # the goal's ratio is the chosen row's, or the best miss's, with its rounds
        assert result["ratios"]["index_speedup"] == shown["speedup"]
        assert result["spread"]["index_speedup"]["rounds"] == shown["speedup_rounds"]
    # Twice the documents, about twice the mentions, and every phase of mine timed at both scales.
    scaling = rates["mine_scaling"]
    assert [r["scale"] for r in scaling] == [1, 2] and 1.8 < scaling[1]["mentions"] / scaling[0]["mentions"] < 2.2
    assert set(rates["mine_scaling_exponents"]) == {"prepare", "index", "mine", "mine_encode", "mine_search",
                                                    "mine_negatives", "mine_write"}
    assert all(np.isfinite(v) for v in rates["mine_scaling_exponents"].values())
