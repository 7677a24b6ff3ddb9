"""The fine-tuned biomedica_clip model leaves the repository as an open_clip `local-dir:` directory: the
weights alone (no optimizer state), open_clip's config and preprocessing, a model card with the run's
validation numbers of the exported epoch. open_clip alone (a fresh process that cannot import medrepro or
experiments, offline, another working directory) loads a copy with the card's code and gets the features
of the model as evaluate loads it. A model with a Hugging Face tokenizer and text tower carries their
files. An unfinished run is refused for `best`; one of its epochs is exported by path."""

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.tokenizer import HFTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import load_file

from experiments.biomedica_clip.config import BiomedicaClipConfig, checkpoint_path
from experiments.biomedica_clip.export import loading_code, local_model_cfg, write_model_dir
from experiments.biomedica_clip.model import load
from medrepro.config import load_config
from medrepro.config_sections import TinyBertConfig
from medrepro.tiny import build_tiny_bert
from tests.integration.conftest import BIOMEDICA_DATA, BIOMEDICA_TRAIN, hidden, medrepro, run_isolated

pytestmark = pytest.mark.integration

# As test_biomedica_clip.py: 4 shards of 32 samples, 4 optimizer steps of 32 per epoch, a held-out shard of 64.
DATA = BIOMEDICA_DATA
TRAIN = BIOMEDICA_TRAIN
TEXTS = ["a figure showing red lesion in the upper left", "a microscopy panel"]

# Run first in the fresh process (argv[1] is the repository): it takes away every way to the repository's
# packages (installed in development mode: a finder on sys.meta_path, a path hook, sys.path entries),
# keeping the environment that lives inside it, and checks that neither package can be found.


# After the model card's code (which defines model, preprocess and tokenizer).
FEATURES = """
import json, sys
import torch
from PIL import Image
tokens = tokenizer(json.loads(sys.argv[2]))
with torch.no_grad():
    image = model.encode_image(preprocess(Image.open(sys.argv[1]))[None])
    print(json.dumps({"image": image.tolist(), "tokens": tokens.tolist(), "text": model.encode_text(tokens).tolist(),
                      "tokenizer": type(tokenizer).__name__,
                      "repository_modules": sorted(m for m in sys.modules
                                                   if m.split(".")[0] in ("medrepro", "experiments"))}))
"""


def card_code(export: Path, path: Path) -> str:
    """The model card's loading code, pointed at `path`."""
    code = (export / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    written = repr(str(export.resolve()))
    assert written in code
    return code.replace(written, repr(str(path)))


def features(model: torch.nn.Module, preprocess, tokenizer, image: Path) -> dict:
    tokens = tokenizer(TEXTS)
    with torch.no_grad():
        return {"image": model.encode_image(preprocess(Image.open(image))[None]).numpy(), "tokens": tokens.tolist(),
                "text": model.encode_text(tokens).numpy()}


def assert_same_features(got: dict, expected: dict) -> None:
    assert got["repository_modules"] == [] and got["tokens"] == expected["tokens"]
    for name in ("image", "text"):
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-5)
        assert np.abs(expected[name]).max() > 0.01, "a feature near zero would prove nothing"


@pytest.fixture(scope="session")
def workdir(biomedica_workdir: Path) -> Path:
    return biomedica_workdir


@pytest.fixture(scope="session")
def run(biomedica_reference: Path) -> Path:
    return biomedica_reference


@pytest.fixture(scope="module")
def exported(workdir: Path, run: Path) -> Path:
    export = workdir / "exported" / "biomedica-clip"
    medrepro(["biomedica_clip", "export", "--run", str(run), "--out", str(export), *TRAIN], workdir)
    return export


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("figure") / "figure.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_export_holds_the_last_epochs_weights_alone_open_clips_config_and_a_card(workdir, run, exported):
    assert {p.name for p in exported.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors",
                                                    "README.md"}
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in exported.rglob("*")), "readable by others"
    saved = torch.load(checkpoint_path(run, 2), map_location="cpu", weights_only=True)
    assert "optimizer" in saved
    weights = load_file(exported / "open_clip_model.safetensors")
    state = {k.removeprefix("module."): v for k, v in saved["state_dict"].items()}
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    config = json.loads((exported / "open_clip_config.json").read_text())
    tiny = json.loads((workdir / "data/biomedica_clip/prepared/model/biomedica-tiny.json").read_text())
    assert config["model_cfg"] == tiny and set(config["preprocess_cfg"]) >= {"mean", "std"}
    card = (exported / "README.md").read_text()
    validation = json.loads((checkpoint_path(run, 2).parent / "results.jsonl").read_text().splitlines()[-1])
    assert validation["epoch"] == 2 and f"| clip_val_loss | {validation['clip_val_loss']:.4f} |" in card
    assert "epoch_2.pt" in card and "Synthetic BIOMEDICA-style" in card


def test_open_clip_alone_loads_a_copy_elsewhere_with_the_features_evaluate_gets(workdir, run, exported, image,
                                                                              tmp_path):
    elsewhere = tmp_path / "elsewhere"
    copy = elsewhere / "models" / "biomedica-clip"
    shutil.copytree(exported, copy)
    shutil.copy(image, elsewhere / "figure.png")
    code = card_code(exported, copy) + FEATURES
    with hidden(exported):
        got = run_isolated(code, elsewhere, "figure.png", json.dumps(TEXTS))

    cfg = load_config(BiomedicaClipConfig, run / "config.yaml",
                      [f"paths.prepared={workdir / 'data' / 'biomedica_clip' / 'prepared'}"])
    model, preprocess, tokenizer = load(cfg, checkpoint_path(run, 2))  # as evaluate loads the fine-tuned model
    assert_same_features(got, features(model.cpu(), preprocess, tokenizer, image))
    assert got["tokenizer"] == "SimpleTokenizer"


def test_a_hugging_face_tokenizer_and_text_tower_travel_with_the_directory(image, tmp_path):
    bert = build_tiny_bert(tmp_path / "bert", TEXTS, TinyBertConfig(dropout=0.0))
    model_cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 1, "width": 64,
                                                 "head_width": 32},
                 "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "linear",
                              "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}}
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(**model_cfg).eval()
    open_clip.set_model_preprocess_cfg(model, {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "size": 32,
                                               "mode": "RGB", "interpolation": "bilinear", "resize_mode": "squash",
                                               "fill_color": 0})
    tokenizer = HFTokenizer(str(bert), context_length=16)
    export = tmp_path / "exported"
    located = str(export.resolve())
    write_model_dir(model, tokenizer, local_model_cfg(model_cfg, export), export,
                    f"```python\n{loading_code(located, hf_text=True)}```\n")
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in export.iterdir()}

    elsewhere = tmp_path / "elsewhere"
    copy = elsewhere / "copy"
    shutil.copytree(export, copy)
    code = card_code(export, copy) + FEATURES
    shutil.rmtree(bert)  # neither the tower's source nor the original directory is there to read
    with hidden(export):
        got = run_isolated(code, elsewhere, str(image), json.dumps(TEXTS))
    assert got["tokenizer"] == "HFTokenizer"
    # The exported preprocessing (squash, bilinear, its mean and std) came back, or the image features differ.
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    assert_same_features(got, features(model, preprocess, tokenizer, image))


def test_best_of_an_unfinished_run_is_refused_and_one_of_its_epochs_exports_by_path(workdir, run, tmp_path):
    killed = tmp_path / "killed"  # as a run killed while training its second epoch leaves it
    shutil.copytree(run, killed, ignore=shutil.ignore_patterns("complete.json", "epoch_2.pt"))
    out = tmp_path / "exported"
    for which, expected in (("best", "holds no finished run"), ("final", "epoch_2.pt not found")):
        proc = medrepro(["biomedica_clip", "export", "--run", str(killed), "--checkpoint", which, "--out", str(out),
                         *TRAIN], workdir, check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert expected in proc.stderr and not out.exists()
        assert which != "best" or "--resume latest" in proc.stderr

    medrepro(["biomedica_clip", "export", "--run", str(killed), "--checkpoint", str(checkpoint_path(killed, 1)),
              "--out", str(out), *TRAIN], workdir)
    validation = json.loads((checkpoint_path(killed, 1).parent / "results.jsonl").read_text().splitlines()[0])
    assert validation["epoch"] == 1
    assert f"| clip_val_loss | {validation['clip_val_loss']:.4f} |" in (out / "README.md").read_text()
