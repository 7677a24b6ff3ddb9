"""The exmed_bert smoke pipeline end to end (the `reproduced` run): the fine-tuned transformers and both
baselines learn the planted endpoint, ClinVec initialisation is at least as good as random, and the
results carry intervals, paired differences and the coverage report."""

import json

import pytest
import torch
from PIL import Image

from tests.integration.conftest import final_weights, kill_when, medrepro

pytestmark = pytest.mark.integration
VARIANTS = ("random_init", "clinvec_init", "random_forest", "xgboost")


def _details(reproduced, variant: str) -> dict:
    return json.loads((reproduced.workdir / "results" / "exmed_bert" / variant / "details.json").read_text())


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_learns_above_the_majority_baseline(reproduced, variant):
    m = _details(reproduced, variant)
    assert m["roc_auc_ci_low"] <= m["roc_auc"] <= m["roc_auc_ci_high"]
    # The majority class scores every patient alike: ROC-AUC 0.5. The whole interval must clear it.
    assert m["majority/roc_auc"] == 0.5 and m["roc_auc_ci_low"] > 0.5, m
    assert m["pr_auc"] > m["majority/pr_auc"]
    for key in ("f1", "precision", "recall", "roc_auc_fpr_0.2", "pr_auc"):
        assert 0.0 <= m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"] <= 1.0, key
    assert m["test_patients"] > 50
    others = [v for v in VARIANTS if v != variant]
    assert all(f"diff/{o}/roc_auc_ci_low" in m for o in others), "paired differences against every other variant"
    results = reproduced.workdir / "results" / "exmed_bert" / variant
    # Every variant charts the same validation metrics, a tree baseline as its one point.
    assert "roc_auc" in (results / "curves" / "val.csv").read_text().splitlines()[0]
    for png in ("roc.png", "pr.png", "roc_compared.png"):
        with Image.open(results / "plots" / png) as image:
            assert image.format == "PNG" and image.width > 100


def test_baselines_learn_well_on_the_planted_signal(reproduced):
    for variant in ("random_forest", "xgboost"):
        assert _details(reproduced, variant)["roc_auc"] > 0.8


def test_clinvec_init_is_at_least_as_good_as_random_init(reproduced):
    clinvec, random = _details(reproduced, "clinvec_init"), _details(reproduced, "random_init")
    assert clinvec["roc_auc"] >= random["roc_auc"]
    # Paired differences are antisymmetric: the same resampled patients on both sides.
    assert clinvec["diff/random_init/roc_auc"] == pytest.approx(-random["diff/clinvec_init/roc_auc"])


def test_coverage_report_and_run_records(reproduced):
    info = json.loads((reproduced.workdir / "results" / "exmed_bert" / "clinvec_init" / "info.json").read_text())
    coverage = info["clinvec_coverage"]["vocabularies"]
    assert set(coverage) == {"icd10cm", "atc", "cpt"}
    for entry in coverage.values():
        assert entry["found"] + sum(entry["ancestor"].values()) + entry["fresh"] == entry["tokens"]
    # The synthetic ClinVec leaves out a share of codes; ICD and ATC ones come back through an ancestor.
    assert sum(coverage["icd10cm"]["ancestor"].values()) > 0 and coverage["cpt"]["ancestor"] == {}
    run = reproduced.workdir / "runs" / "exmed_bert" / "clinvec_init"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["runtime"]["torch_threads"] == 1 and len(manifest["data"]) == 2
    # One MLflow store for the experiment (every variant in one UI), TensorBoard's events per run.
    assert (run.parent / "mlruns").is_dir() and not (run / "mlruns").exists() and (run / "tensorboard").is_dir()
    report = (reproduced.workdir / "results" / "RESULTS.md").read_text()
    assert all(f"| {v} | synthetic |" in report for v in VARIANTS)


SMALL = ["data.synthetic_patients=120", "pretrain.train.epochs=2", "pretrain.train.batch_size=16",
         "pretrain.train.save_every_steps=2", "pretrain.train.keep_last=10", "pretrain.train.tracking.mlflow=false",
         "pretrain.train.tracking.tensorboard=false"]


def test_pretraining_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    """SIGKILL the pretraining stage after its first checkpoint (step 2 of 5 in the first epoch), resume
    with --resume latest: masking keyed by (seed, epoch, patient) and the saved state give the
    uninterrupted run's weights bit for bit, for both initialisations."""
    for name in ("reference", "killed"):
        (tmp_path / name).mkdir()
        medrepro(["exmed_bert", "prepare", *SMALL], tmp_path / name)
        medrepro(["exmed_bert", "clinvec", *SMALL], tmp_path / name)
    reference, killed = (tmp_path / n / "data" / "exmed_bert" / "pretrained" for n in ("reference", "killed"))
    medrepro(["exmed_bert", "pretrain", *SMALL], tmp_path / "reference")
    kill_when(["exmed_bert", "pretrain", *SMALL], tmp_path / "killed",
              killed / "random_init" / "checkpoints" / "step-00000002.pt.sha256")
    assert not (killed / "random_init" / "final.pt").exists()
    medrepro(["exmed_bert", "pretrain", "--resume", "latest", *SMALL], tmp_path / "killed")
    for init in ("random_init", "clinvec_init"):
        a, b = final_weights(reference / init), final_weights(killed / init)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), init
