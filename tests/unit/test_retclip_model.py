"""RET-CLIP model on a tiny local BERT and a tiny ViT: shapes, loss, gradients, config errors."""

import dataclasses
import logging
import math
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from PIL import Image
from torch import nn
from transformers import BertModel

from experiments.retclip import model as model_module
from experiments.retclip.config import ModelConfig
from experiments.retclip.model import HEADS, RetClip, build_model
from medrepro.errors import ConfigError
from medrepro.tiny import TinyBertConfig, build_tiny_bert

EMBED = 16
CONTEXT = 16
VISION = {"image_size": 32, "patch_size": 8, "layers": 1, "width": 32, "head_width": 16, "mlp_ratio": 2.0}

CORPUS = [
    f"{side} eye shows {finding} {extra}"
    for side in ("left", "right")
    for finding in ("normal fundus", "mild diabetic retinopathy", "glaucoma suspect", "cataract", "drusen",
                    "hypertensive retinopathy", "pathological myopia", "laser spots")
    for extra in ("near the optic disc", "in the macula")
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    cfg = TinyBertConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=200, dropout=0.0,
                         seed=0)
    return build_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny", CORPUS, cfg)


def model_config(**overrides) -> ModelConfig:
    kwargs = {"vision_cfg": dict(VISION), "embed_dim": EMBED, "context_length": CONTEXT}
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


@pytest.fixture
def built(bert_dir, tmp_path):
    torch.manual_seed(0)
    return build_model(model_config(), str(bert_dir))


def batch(tokenizer, n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(n, 3, 32, 32, generator=generator)
    right = torch.randn(n, 3, 32, 32, generator=generator)
    return left, right, tokenizer(CORPUS[:: len(CORPUS) // n][:n])


def test_build_returns_model_tokenizer_and_transform(built):
    model, tokenizer, transform = built
    assert isinstance(model, RetClip)
    tokens = tokenizer(["left eye shows cataract", "right eye shows drusen"])
    assert tokens.shape == (2, CONTEXT) and tokens.dtype == torch.long
    image = transform(Image.new("RGB", (50, 40), (200, 30, 30)))
    assert image.shape == (3, 32, 32)


def test_text_tower_holds_the_pretrained_weights(built, bert_dir):
    """pretrained_text must load the encoder's saved weights, not a fresh random initialisation."""
    model, _, _ = built
    saved = BertModel.from_pretrained(bert_dir, add_pooling_layer=False)
    ours = model.text.transformer.state_dict()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(ours[name], tensor), name


def test_encode_shapes(built):
    model, tokenizer, _ = built
    model.eval()
    left, right, tokens = batch(tokenizer, n=3)
    eyes = model.encode_eyes(left, right)
    assert set(eyes) == set(HEADS)
    assert all(v.shape == (3, EMBED) for v in eyes.values())
    assert model.encode_eye(left, "left").shape == (3, EMBED)
    texts = {head: model.encode_text(tokens, head) for head in HEADS}
    assert all(v.shape == (3, EMBED) for v in texts.values())
    assert not torch.allclose(texts["patient"], texts["left"])  # three separate heads


def test_encode_eyes_keeps_left_and_right_apart(built):
    """Each eye's feature must depend on that eye's image only (the pair is batched through one tower)."""
    model, tokenizer, _ = built
    model.eval()
    left, right, _ = batch(tokenizer, n=2)
    base = model.encode_eyes(left, right)
    changed = model.encode_eyes(left, right + 1.0)
    assert torch.allclose(base["left"], changed["left"], atol=1e-6)
    assert not torch.allclose(base["right"], changed["right"])
    assert not torch.allclose(base["patient"], changed["patient"])
    assert torch.allclose(model.encode_eye(left, "left"), base["left"], atol=1e-5)
    assert torch.allclose(model.encode_eye(right, "right"), base["right"], atol=1e-5)


def test_heads_as_upstream(built):
    """Upstream RET-CLIP: no bias in the three image maps; text-head weights normal with std width^-0.5."""
    model, _, _ = built
    assert model.patient_proj.bias is None and model.left_proj.bias is None and model.right_proj.bias is None
    assert model.patient_proj.in_features == 2 * EMBED and model.patient_proj.out_features == EMBED
    assert model.left_proj.in_features == EMBED and model.right_proj.in_features == EMBED
    weights = torch.cat([m.weight.flatten() for h in HEADS for m in model.text_heads[h] if isinstance(m, nn.Linear)])
    assert weights.std().item() == pytest.approx(32**-0.5, rel=0.05)  # text width 32


def test_accuracy_extra_counts_in_batch_matches():
    """`acc` is the share of images whose own report is the most similar text of the batch."""
    model = RetClip(nn.Identity(), nn.Identity(), 4, 2, 0.0, 1.0)
    with torch.no_grad():
        model.patient_proj.weight.copy_(torch.cat([torch.eye(2), torch.zeros(2, 2)], dim=1))
        for linear in (m for h in HEADS for m in model.text_heads[h] if isinstance(m, nn.Linear)):
            linear.weight.copy_(torch.eye(*linear.weight.shape))
            linear.bias.zero_()
    left = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    text = torch.tensor([[1.0, 0.0, 0, 0], [0.0, 1.0, 0, 0], [0.0, 1.0, 0, 0]])
    _, logs = model(left, torch.zeros(3, 2), text)
    assert logs["acc"].item() == pytest.approx(2 / 3)  # the third image is closest to the first text


def test_no_partial_initialisation_warning(bert_dir, caplog):
    """open_clip's "initialized partially" comes from loading the text weights apart; none is logged."""
    with caplog.at_level(logging.WARNING):
        build_model(model_config(), str(bert_dir))
    assert not [r for r in caplog.records if "initialized" in r.getMessage()], caplog.text


def full_profile_model_config() -> ModelConfig:
    from experiments.retclip.config import RetClipConfig
    from medrepro.config import load_config

    return load_config(RetClipConfig, Path("experiments/retclip/configs/full.yaml").resolve()).model


def activations(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules() if isinstance(m, nn.GELU | QuickGELU)}


@pytest.mark.parametrize("tag", ["openai", "laion2b_s34b_b88k"])
def test_vision_activation_matches_the_pretrained_tag(bert_dir, monkeypatch, tag):
    """The full profile's ViT-B-16 built offline (weights not loaded): QuickGELU exactly when the tag
    was trained with it, as open_clip's pretrained table says."""
    loaded = []
    monkeypatch.setattr(model_module, "load_vision_weights", lambda visual, cfg, qg: loaded.append((cfg, qg)))
    cfg = dataclasses.replace(full_profile_model_config(), vision_pretrained=tag, embed_dim=EMBED,
                              context_length=CONTEXT)
    needed = open_clip.get_pretrained_cfg("ViT-B-16", tag).get("quick_gelu", False)
    model, _, _ = build_model(cfg, str(bert_dir))
    assert activations(model.visual) == {QuickGELU if needed else nn.GELU}
    assert loaded and loaded[0][1] is needed
    if tag == "openai":
        assert needed and cfg.vision_pretrained == full_profile_model_config().vision_pretrained


def test_quick_gelu_contradicting_the_tag_is_refused():
    cfg = dataclasses.replace(full_profile_model_config(), quick_gelu=False)
    with pytest.raises(ConfigError, match="quick_gelu"):
        model_module.quick_gelu(cfg)


def test_forward_loss_and_logs(built):
    model, tokenizer, _ = built
    loss, logs = model(*batch(tokenizer))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(logs) == {f"loss_{h}" for h in HEADS} | {f"logit_scale_{h}" for h in HEADS} | {"acc", "logit_scale"}
    assert 0.0 <= logs["acc"].item() <= 1.0 and logs["logit_scale"] == logs["logit_scale_patient"]
    assert loss.item() == pytest.approx(sum(logs[f"loss_{h}"].item() for h in HEADS), rel=1e-5)
    for head in HEADS:
        assert logs[f"logit_scale_{head}"].item() == pytest.approx(90.0, rel=1e-4)  # exp(ln 90)
        assert not logs[f"loss_{head}"].requires_grad


def test_gradient_reaches_every_part(built):
    model, tokenizer, _ = built
    loss, _ = model(*batch(tokenizer))
    loss.backward()

    def reached(module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert reached(model.visual)
    assert reached(model.text.transformer)
    for head in HEADS:
        assert reached(model.text_heads[head]), head
        grad = model.logit_scales[head].grad
        assert grad is not None and torch.isfinite(grad) and grad != 0, head
    for proj in (model.patient_proj, model.left_proj, model.right_proj):
        assert reached(proj)


def test_clamp_logit_scales(built):
    model, _, _ = built
    with torch.no_grad():
        for value, head in zip((-1.0, 2.0, 50.0), HEADS, strict=True):
            model.logit_scales[head].fill_(value)
    model.clamp_logit_scales()
    values = [model.logit_scales[h].item() for h in HEADS]
    assert values == pytest.approx([0.0, 2.0, math.log(100)])
    assert all(model.logit_scales[h].requires_grad for h in HEADS)


def test_max_logit_scale_from_config(bert_dir, tmp_path):
    # The config refuses a start above the clamp: the scales climb past it as training would push them.
    model, _, _ = build_model(model_config(max_logit_scale=3.0, init_logit_scale=2.0), str(bert_dir))
    with torch.no_grad():
        for head in HEADS:
            model.logit_scales[head].fill_(5.0)
    model.clamp_logit_scales()
    assert [model.logit_scales[h].item() for h in HEADS] == pytest.approx([3.0] * 3)


def test_unknown_vision_cfg_key(bert_dir, tmp_path):
    cfg = model_config(vision_cfg={**VISION, "patchsize": 8})
    with pytest.raises(ConfigError, match="'patchsize'"):
        build_model(cfg, str(bert_dir))


def test_unknown_vision_model(bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="ViT-Nope-99"):
        build_model(model_config(vision_model="ViT-Nope-99"), str(bert_dir))


def test_missing_encoder_directory(tmp_path):
    missing = tmp_path / "no_such_encoder"
    with pytest.raises(ConfigError) as info:
        build_model(model_config(), str(missing))
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_vision_cfg_override_is_applied(bert_dir, tmp_path):
    model, _, _ = build_model(model_config(vision_cfg={**VISION, "layers": 2}), str(bert_dir))
    assert len(model.visual.transformer.resblocks) == 2
    assert model.visual.image_size == (32, 32)


def test_a_few_steps_reduce_the_loss(built):
    model, tokenizer, _ = built
    data = batch(tokenizer, n=6, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss, _ = model(*data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.clamp_logit_scales()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.85 * losses[0], losses
