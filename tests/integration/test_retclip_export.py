"""The exported RET-CLIP leaves the repository. open_clip alone (a fresh process that cannot import
medrepro or experiments, offline, another working directory) loads a copy with the model card's code and
gets the run's left-eye image feature, [CLS] state and left text feature, and loads the directory in place
with `create_model_and_transforms("local-dir:...")` alone; `load_exported` rebuilds the whole model there,
which scores the test eyes exactly as the run's evaluation; an unfinished run is refused."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.retclip.config import RetClipConfig
from experiments.retclip.model import build_model
from medrepro.config import load_config
from medrepro.config_sections import encoder_path
from medrepro.rundir import RunDir
from tests.integration.conftest import REPO, TRAIN_OVERRIDES, hidden, medrepro, run_isolated

pytestmark = pytest.mark.integration

TEXTS = ["Left eye: normal fundus.", "Left eye: moderate non proliferative retinopathy, drusen."]

SCORE = """
import json, sys
from pathlib import Path
from experiments.retclip import zeroshot
from experiments.retclip.export import load_exported

exported = load_exported(sys.argv[1])
pred = zeroshot.predict(exported.model, exported.tokenizer, exported.transform, exported.prompts, Path(sys.argv[2]), 64)
print(json.dumps({"y_true": pred.y_true.tolist(), "y_score": pred.y_score.tolist(), "config": exported.config}))
"""

# Run first in the fresh process (argv[1] is the repository): it takes away every way to the repository's
# packages (installed in development mode: a finder on sys.meta_path, a path hook, sys.path entries),
# keeping the environment that lives inside it, and checks that neither package can be found.


# After the model card's code (which defines model, preprocess, tokenizer and encode_text).
FEATURES = """
import json, sys
from PIL import Image
tokens = tokenizer(json.loads(sys.argv[2]))
with torch.no_grad():
    image = model.encode_image(preprocess(Image.open(sys.argv[1]))[None])
    print(json.dumps({"image": image.tolist(), "tokens": tokens.tolist(), "cls": model.encode_text(tokens).tolist(),
                      "text": encode_text(tokens).tolist(), "logit_scale": model.logit_scale.item(),
                      "repository_modules": sorted(m for m in sys.modules
                                                   if m.split(".")[0] in ("medrepro", "experiments"))}))
"""

# open_clip's loader alone, on the directory where the export was written.
IN_PLACE = """
import json, sys
import open_clip, torch
from PIL import Image
path = sys.argv[1]
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + path)
model.eval()
with torch.no_grad():
    image = model.encode_image(preprocess(Image.open(sys.argv[2]))[None])
print(json.dumps({"image": image.tolist(), "tokens": open_clip.get_tokenizer("local-dir:" + path)(["x"]).tolist()}))
"""


def card_code(export: Path, path: Path) -> str:
    """The model card's open_clip loading code, pointed at `path`."""
    card = (export / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    written = repr(str(export.resolve()))
    assert written in code
    return code.replace(written, repr(str(path)))


@pytest.fixture(scope="module")
def exported(retclip_workdir: Path, reference_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    export = tmp_path_factory.mktemp("retclip_export") / "retclip-pubmedbert"
    medrepro(["retclip", "export", "--variant", "pubmedbert", "--run", str(reference_run), "--out", str(export),
              *TRAIN_OVERRIDES], retclip_workdir)
    return export


@pytest.fixture(scope="module")
def project_model(retclip_workdir: Path, reference_run: Path) -> tuple:
    """RET-CLIP of the run's best checkpoint, as evaluate builds and loads it: (model, tokenizer, transform)."""
    part = RunDir(reference_run / "seed-0")
    cfg = load_config(RetClipConfig, part.config_file)
    model, tokenizer, transform = build_model(cfg.model, str(retclip_workdir / encoder_path(cfg.encoders,
                                                                                             "pubmedbert")))
    part.load_into(model, "best", "pubmedbert")
    return model.eval(), tokenizer, transform


@pytest.fixture(scope="module")
def eye_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eye") / "eye.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_export_is_an_open_clip_directory_with_the_rest_beside_it(exported, reference_run):
    assert {p.name for p in exported.iterdir()} == {
        "open_clip_config.json", "open_clip_model.safetensors", "config.json", "tokenizer.json",
        "tokenizer_config.json", "retclip_heads.safetensors", "retclip_config.json", "prompts.yaml", "README.md"}
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in exported.rglob("*")), "readable by others"
    model_cfg = json.loads((exported / "open_clip_config.json").read_text())["model_cfg"]
    assert model_cfg["text_cfg"]["hf_model_name"] == str(exported.resolve())
    # The card's validation numbers are the run's, at the exported (best) step.
    step = json.loads((exported / "retclip_config.json").read_text())["step"]
    logged = [json.loads(line) for line in (reference_run / "seed-0" / "train_log.jsonl").read_text().splitlines()]
    auroc = next(r["val/auroc_macro"] for r in logged if r["step"] == step and "val/auroc_macro" in r)
    assert auroc == max(r["val/auroc_macro"] for r in logged if "val/auroc_macro" in r)
    assert f"| val/auroc_macro | {auroc:.4f} |" in (exported / "README.md").read_text()


def test_open_clip_alone_loads_a_copy_elsewhere_with_the_models_left_eye_features(exported, project_model,
                                                                                  eye_image, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    copy = elsewhere / "models" / "retclip"
    shutil.copytree(exported, copy)
    shutil.copy(eye_image, elsewhere / "eye.png")
    code = card_code(exported, copy) + FEATURES
    with hidden(exported):
        got = run_isolated(code, elsewhere, "eye.png", json.dumps(TEXTS))
    assert got["repository_modules"] == []

    model, tokenizer, transform = project_model
    tokens = tokenizer(TEXTS)
    with torch.no_grad():
        image = model.encode_eye(transform(Image.open(eye_image))[None], "left")
        cls, text = model.text(tokens), model.encode_text(tokens, "left")
    assert got["tokens"] == tokens.tolist()
    np.testing.assert_allclose(got["image"], image.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["cls"], cls.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["text"], text.numpy(), rtol=0, atol=1e-5)
    assert got["logit_scale"] == pytest.approx(model.logit_scales["left"].item(), abs=1e-6)
    assert np.abs(image.numpy()).max() > 0.1, "a feature near zero would prove nothing"


def test_open_clip_alone_loads_the_export_in_place_from_another_directory(exported, project_model, eye_image,
                                                                          tmp_path):
    got = run_isolated(IN_PLACE, tmp_path, str(exported), str(eye_image))
    model, tokenizer, transform = project_model
    with torch.no_grad():
        image = model.encode_eye(transform(Image.open(eye_image))[None], "left")
    np.testing.assert_allclose(got["image"], image.numpy(), rtol=0, atol=1e-5)
    assert got["tokens"] == tokenizer(["x"]).tolist()


def test_load_exported_rebuilds_the_whole_model_elsewhere_with_the_runs_scores(retclip_workdir, reference_run,
                                                                               exported, tmp_path):
    results = tmp_path / "results"
    medrepro(["retclip", "evaluate", "--variant", "pubmedbert", "--run", str(reference_run), "--out", str(results),
              *TRAIN_OVERRIDES, "eval.bootstrap=10"], retclip_workdir)
    expected = json.loads((results / "predictions.json").read_text())["eye"]

    elsewhere = tmp_path / "elsewhere"
    copy = elsewhere / "retclip"
    shutil.copytree(exported, copy)
    # Only the package on the path: no run directory, no data/ beside the working directory, no hub.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    with hidden(exported):
        proc = subprocess.run([sys.executable, "-c", SCORE, str(copy), str(retclip_workdir / "data/retclip/lmdb/test")],
                              cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialized partially" not in proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["y_true"] == expected["y_true"]
    assert np.allclose(got["y_score"], expected["y_score"]["0"], atol=1e-6, rtol=0)
    assert got["config"]["variant"] == "pubmedbert" and got["config"]["eye"] == "left"
    assert not any(str(retclip_workdir) in str(v) for k, v in got["config"].items() if k != "encoder")


def test_best_of_an_unfinished_run_is_refused_with_one_line(retclip_workdir, reference_run, tmp_path):
    run = tmp_path / "killed"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns("complete.json"))
    out = tmp_path / "exported"
    proc = medrepro(["retclip", "export", "--variant", "pubmedbert", "--run", str(run), "--out", str(out),
                     *TRAIN_OVERRIDES], retclip_workdir, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "holds no finished run" in proc.stderr and "--resume latest" in proc.stderr
    assert not out.exists()
