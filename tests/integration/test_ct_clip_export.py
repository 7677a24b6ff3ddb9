"""The exported CT-CLIP leaves the repository: copied elsewhere and loaded in a fresh process that can import
neither medrepro nor experiments, through transformers' Auto classes alone, the model card's own code scores
the validation volumes as the project's zero-shot evaluation does, and the text tower loads without custom
code even when the encoder's files name CXR-BERT's (as the real checkpoint's do); an unfinished run is
refused."""

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.ct_clip import zeroshot
from experiments.ct_clip.config import CtClipConfig
from experiments.ct_clip.data import ShardDataset
from experiments.ct_clip.model import build_model, tokenize
from experiments.ct_clip.prompts import prompts
from medrepro.config import load_config
from medrepro.rundir import RunDir
from tests.integration.conftest import REPO, medrepro, run_isolated

pytestmark = pytest.mark.integration

# 56 training volumes, one per patient, 8 held out for selection; 16 validation volumes (as test_ct_clip).
DATA = ["data.synthetic.train=56", "data.synthetic.valid=16", "data.synthetic.scans=1",
        "data.synthetic.reconstructions=1", "data.shard_samples=64", "data.workers=1",
        "encoders.cxr_bert.tiny.dropout=0.0"]
TRAIN = [*DATA, "train.epochs=2", "train.batch_size=8", "train.eval_every_epochs=1.0", "train.warmup_steps=2",
         "train.tracking.tensorboard=false", "train.tracking.mlflow=false", "eval.selection_patients=8"]
CXR_BERT = REPO / "shared" / "medrepro" / "architectures" / "microsoft--BiomedVLP-CXR-BERT-specialized"

LOAD = """
import json, os, sys
import torch
from transformers import AutoModel, AutoTokenizer

name = sys.argv[1]
card = open(os.path.join(name, "README.md")).read()
scope = {}
exec(card.split("```python\\n", 1)[1].split("```", 1)[0], scope)  # the card's loading and scoring code
model, tokens = scope["model"], scope["tokens"]
text_encoder = AutoModel.from_pretrained(os.path.join(name, "text_encoder"), add_pooling_layer=False).eval()
text_tokenizer = AutoTokenizer.from_pretrained(os.path.join(name, "text_encoder"))
text_tokens = text_tokenizer(scope["prompts"], padding="max_length", truncation=True,
                             max_length=model.config.context_length, return_tensors="pt")
with torch.inference_mode():
    cls = text_encoder(input_ids=text_tokens["input_ids"], attention_mask=text_tokens["attention_mask"])
    output = model(scope["volumes"], tokens["input_ids"], tokens["attention_mask"])
print(json.dumps({
    "classes": [type(model).__name__, type(text_encoder).__name__],
    "probability": scope["probability"].tolist(), "input_ids": tokens["input_ids"].tolist(),
    "text_encoder_input_ids": text_tokens["input_ids"].tolist(), "cls": cls.last_hidden_state[:, 0].tolist(),
    "volume_embeds": output.volume_embeds.tolist(), "text_embeds": output.text_embeds.tolist(),
    "logits_per_volume": output.logits_per_volume.tolist(),
    "repository_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("medrepro", "experiments"))}))
"""


def name_cxr_bert_code(encoder: Path) -> None:
    """Make the tiny encoder's files name CXR-BERT's own classes and code, as the published checkpoint's do."""
    for file in ("config.json", "tokenizer_config.json"):
        ours, theirs = json.loads((encoder / file).read_text()), json.loads((CXR_BERT / file).read_text())
        keys = ("architectures", "model_type", "auto_map") if file == "config.json" else ("tokenizer_class", "auto_map")
        (encoder / file).write_text(json.dumps({**ours, **{k: theirs[k] for k in keys}}, indent=2))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run whose text encoder's files name CXR-BERT's code."""
    work = tmp_path_factory.mktemp("ct_clip_export")
    medrepro(["ct_clip", "prepare", *DATA], work)
    medrepro(["ct_clip", "shards", *DATA], work)
    encoder = work / "cxr-bert-like"
    shutil.copytree(work / "data" / "ct_clip" / "prepared" / "encoder", encoder)
    name_cxr_bert_code(encoder)
    medrepro(["ct_clip", "train", "--variant", "cxr_bert", *TRAIN, f"encoders.cxr_bert.path={encoder}"], work)
    return work


def test_export_loads_elsewhere_through_the_auto_classes_with_the_projects_scores(workdir, tmp_path):
    encoder = workdir / "cxr-bert-like"
    export = tmp_path / "exported" / "ct_clip-cxr_bert"
    medrepro(["ct_clip", "export", "--out", str(export), *TRAIN, f"encoders.cxr_bert.path={encoder}"], workdir)
    assert {p.relative_to(export).as_posix() for p in export.rglob("*")} == {
        "config.json", "model.safetensors", "modeling_ct_clip.py", "tokenizer.json", "tokenizer_config.json",
        "README.md", "text_encoder", "text_encoder/config.json", "text_encoder/model.safetensors",
        "text_encoder/tokenizer.json", "text_encoder/tokenizer_config.json"}
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in export.rglob("*")), "readable by others"
    for file in ("config.json", "tokenizer_config.json"):  # the tower loads without CXR-BERT's code
        assert "auto_map" not in (export / "text_encoder" / file).read_text(), file

    dataset = ShardDataset(workdir / "data" / "ct_clip" / "shards" / "valid" / "manifest.json")
    volumes = torch.stack([dataset[i][0] for i in range(len(dataset))])
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(export, elsewhere / export.name)
    np.save(elsewhere / "volumes.npy", volumes.numpy())
    got = run_isolated(LOAD, elsewhere, export.name)
    assert got["classes"] == ["CTClipModel", "BertModel"] and got["repository_modules"] == []

    cfg = load_config(CtClipConfig, REPO / "experiments" / "ct_clip" / "configs" / "smoke.yaml", TRAIN)
    model, tokenizer = build_model(cfg.model, tuple(cfg.data.shape), str(encoder))
    RunDir(workdir / "runs" / "ct_clip" / "cxr_bert").load_into(model, "best", "cxr_bert")
    model.eval()
    expected = zeroshot.predict(model, tokenizer, dataset, batch_size=4, context_length=cfg.model.context_length)
    np.testing.assert_allclose(got["probability"], expected.y_score, rtol=0, atol=1e-5)

    tokens = tokenize(tokenizer, [p for pair in prompts() for p in pair], cfg.model.context_length)
    assert got["input_ids"] == got["text_encoder_input_ids"] == tokens["input_ids"].tolist()
    with torch.no_grad():
        image, text = model.encode_image(volumes), model.encode_text(**tokens)
        cls = model.text(**tokens).last_hidden_state[:, 0]
    for key, value in {"volume_embeds": image, "text_embeds": text, "cls": cls}.items():
        torch.testing.assert_close(torch.tensor(got[key]), value, rtol=0, atol=1e-5, msg=key)
    scale = model.temperature.exp()
    logits = scale * torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    torch.testing.assert_close(torch.tensor(got["logits_per_volume"]), logits, rtol=0, atol=1e-4)


def test_an_unfinished_run_is_refused_with_one_line(workdir, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(workdir / "runs" / "ct_clip" / "cxr_bert", unfinished)
    (unfinished / "complete.json").unlink()
    out = tmp_path / "export"
    proc = medrepro(["ct_clip", "export", "--run", str(unfinished), "--out", str(out), *TRAIN,
                     f"encoders.cxr_bert.path={workdir / 'cxr-bert-like'}"], workdir, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "holds no finished run" in proc.stderr, proc.stderr
    assert not out.exists()

