"""The exported ExMed-BERT leaves the repository: copied elsewhere and loaded in a fresh process that can
import neither medrepro nor experiments, through transformers' Auto classes alone, the model card's own
code encodes raw patients into the dataset's sequences and scores them as the project's evaluation does;
an unfinished run is refused."""

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.exmed_bert import dataset
from experiments.exmed_bert.config import ExMedBertConfig
from experiments.exmed_bert.endpoint import endpoint_model
from experiments.exmed_bert.evaluate import test_scores as project_scores
from experiments.exmed_bert.model import model_inputs
from medrepro.config import load_config
from medrepro.rundir import RunDir
from tests.integration.conftest import REPO, medrepro, run_isolated

pytestmark = pytest.mark.integration

VARIANT = "clinvec_init"
# 120 patients; sequences cut at 24 positions, so that the card's truncation and visit renumbering run.
DATA = ["data.synthetic_patients=120", "data.max_length=24"]
TRAINING = [*DATA, "pretrain.train.epochs=2", "pretrain.train.batch_size=16", "pretrain.train.tracking.mlflow=false",
            "pretrain.train.tracking.tensorboard=false", "train.epochs=2", "train.batch_size=16",
            "train.eval_every_epochs=1.0", "train.tracking.mlflow=false", "train.tracking.tensorboard=false"]

# Run first in the fresh process (argv[1] is the repository): it takes away every way to the repository's
# packages (installed in development mode: a finder on sys.meta_path, a path hook, sys.path entries),
# keeping the environment that lives inside it, and checks that neither package can be found.


LOAD = """
import json, os, sys
import torch
from transformers import AutoConfig, AutoModel

name = sys.argv[1]
card = open(os.path.join(name, "README.md")).read()
scope = {}
exec(card.split("```python\\n", 1)[1].split("```", 1)[0], scope)  # the card's loading and scoring code
encoder = AutoModel.from_pretrained(name, trust_remote_code=True).eval()
config = AutoConfig.from_pretrained(name, trust_remote_code=True)
with torch.inference_mode():
    hidden = encoder(**scope["batch"](scope["sequences"])).last_hidden_state
print(json.dumps({
    "classes": [type(scope["model"]).__name__, type(encoder).__name__, type(config).__name__],
    "sequences": scope["sequences"], "probability": scope["probability"].tolist(), "hidden": hidden.tolist(),
    "repository_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("medrepro", "experiments"))}))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished fine-tuning run of clinvec_init on a small synthetic cohort."""
    work = tmp_path_factory.mktemp("exmed_export")
    for stage in (["prepare"], ["clinvec"], ["pretrain"], ["train", "--variant", VARIANT]):
        medrepro(["exmed_bert", *stage, *TRAINING], work)
    return work


def test_export_loads_elsewhere_through_the_auto_classes_with_the_projects_scores(workdir, tmp_path):
    export = tmp_path / "exported" / f"exmed_bert-{VARIANT}"
    medrepro(["exmed_bert", "export", "--variant", VARIANT, "--out", str(export), *TRAINING], workdir)
    assert {p.name for p in export.iterdir()} == {"config.json", "model.safetensors", "modeling_exmed_bert.py",
                                                  "vocabulary.json", "README.md"}
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in export.rglob("*")), "readable by others"

    prepared = workdir / "data" / "exmed_bert" / "prepared"
    records = dataset.read_split(prepared, "test")
    raw = {p["patient_id"]: p for p in json.loads((prepared / "source" / "patients.json").read_text())}
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(export, elsewhere / export.name)
    (elsewhere / "patients.json").write_text(json.dumps([raw[r["patient_id"]] for r in records]))
    got = run_isolated(LOAD, elsewhere, export.name)

    assert got["classes"] == ["ExMedBertForSequenceClassification", "ExMedBertModel", "ExMedBertConfig"]
    assert got["repository_modules"] == []
    assert any(len(r["tokens"]) == 24 for r in records), "no sequence was truncated: the test proves less"
    columns = {"input_ids": "tokens", "code_type_ids": "types", "age_ids": "ages", "visit_ids": "visits",
               "sex_ids": "sex", "state_ids": "state"}
    assert [{k: s[k] for k in columns} for s in got["sequences"]] == [{k: r[v] for k, v in columns.items()}
                                                                     for r in records]

    cfg = load_config(ExMedBertConfig, REPO / "experiments" / "exmed_bert" / "configs" / "smoke.yaml",
                      [*TRAINING, f"paths.prepared={prepared}", f"paths.clinvec={workdir}/data/exmed_bert/clinvec",
                       f"paths.runs={workdir}/runs/exmed_bert"])
    run = RunDir(workdir / "runs" / "exmed_bert" / VARIANT)
    expected = project_scores(cfg, VARIANT, run, "best", records)
    np.testing.assert_allclose(got["probability"], expected, rtol=0, atol=1e-5)

    weights = run.load("best", VARIANT)["model"]
    model = endpoint_model(cfg, dataset.read_vocab(prepared), {k.removeprefix("encoder."): v for k, v in
                                                                weights.items() if k.startswith("encoder.")})
    batch = model_inputs(dataset.pad_batch(records, cfg.pretrain.plos_days))
    with torch.no_grad():
        hidden = model.eval().encoder(**batch).last_hidden_state
    torch.testing.assert_close(torch.tensor(got["hidden"]), hidden, rtol=0, atol=1e-5)


def test_an_unfinished_run_is_refused_with_one_line(workdir, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(workdir / "runs" / "exmed_bert" / VARIANT, unfinished)
    (unfinished / "complete.json").unlink()
    out = tmp_path / "export"
    proc = medrepro(["exmed_bert", "export", "--variant", VARIANT, "--run", str(unfinished), "--out", str(out),
                     *TRAINING], workdir, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "holds no finished run" in proc.stderr, proc.stderr
    assert not out.exists()
