"""ct_clip's CTViT against upstream's: the same tensors under `UPSTREAM`'s names, and the same tokens.

tests/fixtures/ct_clip/upstream_ctvit.pt was made once from upstream's own code
(ibrahimethemhamamci/CT-CLIP at a2a155c, transformer_maskgit's ctvit.py and attention.py, with
vector-quantize-pytorch 1.1.2 as its setup.py pins, einops and beartype, on the CPU) by the script stored in
its "how" field: a small CTViT with every parameter perturbed, its state dict and key shapes, a fixed input
(a 6 x 4 x 4 token grid) and upstream's encoder tokens for it (`encode(to_patch_emb(video))`, before the
VQ CT-CLIP leaves out).
"""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F
from transformers import BertConfig

from experiments.ct_clip.config import ModelConfig
from experiments.ct_clip.model import UPSTREAM, CTViT, clip_config
from experiments.ct_clip.modeling_ct_clip import CTClipModel
from medrepro.errors import CheckpointError
from medrepro.published import load_published

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ct_clip" / "upstream_ctvit.pt"


def _upstream(codebook_size: int = 0) -> tuple[dict, CTViT]:
    """The fixture and our CTViT of its size, with a VQ codebook of `codebook_size` entries (the fixture's
    tokens are upstream's before its VQ; its shapes include the VQ's, 16 entries)."""
    saved = torch.load(FIXTURE, weights_only=True)
    return saved, CTViT(SimpleNamespace(**vars(ModelConfig(**saved["config"], latent=8)), codebook_size=codebook_size))


def test_every_upstream_tensor_is_ours_or_named_as_unused_and_shapes_agree():
    saved, ours = _upstream(codebook_size=16)
    mapped = {UPSTREAM.ours(k): shape for k, shape in saved["shapes"].items() if UPSTREAM.ours(k) is not None}
    unused = sorted(k for k in saved["shapes"] if UPSTREAM.ours(k) is None)
    assert mapped == {k: list(v.shape) for k, v in ours.state_dict().items()}
    # Only what CT-CLIP never computes with, and nothing that holds a value.
    assert {k.split(".")[0] for k in unused} == {"vq", "to_patch_emb_first_frame", "to_pixels", "to_pixels_first_frame",
                                                 "enc_spatial_transformer", "enc_temporal_transformer"}
    # vector-quantize-pytorch 1.1.2 (upstream's pin) keeps no EMA sums; later versions add `embed_avg`, also dropped.
    assert {k for k in unused if k.startswith("vq.")} == {"vq._codebook.initted", "vq._codebook.cluster_size"}
    for key in unused:
        if key.endswith((".beta", ".null_kv")):
            assert not saved["state_dict"][key].any(), key


def test_upstream_weights_give_upstream_tokens():
    saved, ours = _upstream()
    ours.load_state_dict({UPSTREAM.ours(k): v for k, v in saved["state_dict"].items() if UPSTREAM.ours(k)}, strict=True)
    with torch.no_grad():
        tokens = ours.eval()(saved["video"])
    assert tokens.shape == saved["tokens"].shape
    torch.testing.assert_close(tokens, saved["tokens"], rtol=1e-4, atol=1e-5)


CLIP_FIXTURE = FIXTURE.with_name("upstream_ctclip.pt")


def _upstream_clip() -> dict:
    """tests/fixtures/ct_clip/upstream_ctclip.pt: upstream's whole CTCLIP at a small size as its zero-shot script
    builds it (CTViT, a BertModel with its pooler, the latent projections and the temperature), every tensor
    perturbed, and upstream's own normalised latents for a fixed volume and text (the script is in `how`)."""
    return torch.load(CLIP_FIXTURE, weights_only=True)


def _ours_for(saved: dict) -> CTClipModel:
    """Our model of the fixture's size, with upstream's VQ codebook at inference as the release needs."""
    ctvit = saved["ctvit"]
    cfg = ModelConfig(dim=ctvit["dim"], patch=ctvit["patch_size"], temporal_patch=ctvit["temporal_patch_size"],
                      spatial_depth=ctvit["spatial_depth"], temporal_depth=ctvit["temporal_depth"],
                      dim_head=ctvit["dim_head"], heads=ctvit["heads"], latent=saved["latent"])
    config = clip_config(cfg, tuple(saved["volume"].shape[2:]), BertConfig(**saved["text_config"]))
    config.codebook_size = ctvit["codebook_size"]
    return CTClipModel(config)


def test_the_whole_upstream_ctclip_loads_strictly_and_gives_upstreams_latents():
    """Every tensor of the release is ours or dropped by name (the VQ, the unused extra projections, BERT's
    pooler, ...), every tensor of ours is filled, and the volume and text latents equal upstream's (1e-5)."""
    saved = _upstream_clip()
    ours = _ours_for(saved)
    # transformers 4.30 (upstream's era) saved BERT's position ids with the weights; newer versions do not.
    assert "text_transformer.embeddings.position_ids" in saved["state_dict"]
    counts = load_published(ours, saved["state_dict"], UPSTREAM, CLIP_FIXTURE, "CT-CLIP's zero-shot model")
    assert counts["loaded"] == len(ours.state_dict())
    with torch.no_grad():
        image = F.normalize(ours.eval().encode_image(saved["volume"]), dim=-1)
        text = F.normalize(ours.encode_text(saved["input_ids"], saved["attention_mask"]), dim=-1)
    torch.testing.assert_close(image, saved["image_latents"], rtol=0, atol=1e-5)
    torch.testing.assert_close(text, saved["text_latents"], rtol=0, atol=1e-5)
    assert torch.equal(ours.temperature, saved["state_dict"]["temperature"])


@pytest.mark.parametrize("change, named", [
    (lambda s: s.update({"to_text_latent.weights": s.pop("to_text_latent.weight")}), "'to_text_latent.weights'"),
    (lambda s: s.update({"to_visual_latent.weight": s["to_visual_latent.weight"][:, :256]}),
     "'to_visual_latent.weight' has shape [16, 256]"),
    (lambda s: s.pop("temperature"), "first 'temperature'"),
])
def test_a_release_with_one_tensor_renamed_reshaped_or_missing_is_refused_by_name(change, named):
    saved = _upstream_clip()
    change(saved["state_dict"])
    with pytest.raises(CheckpointError, match=re.escape(named)) as refused:
        load_published(_ours_for(saved), saved["state_dict"], UPSTREAM, CLIP_FIXTURE, "CT-CLIP's zero-shot model")
    assert "\n" not in str(refused.value)


def test_load_release_builds_the_released_architecture_from_the_config_and_the_file(tmp_path):
    """`evaluate --weights`' loader: the CTViT from the config, the text tower's config and tokenizer from
    `encoders.cxr_bert.path`, the vocabulary and codebook sizes from the file; upstream's latents come back.
    A file without the codebook (not CT-CLIP's release) is one line."""
    from experiments.ct_clip.config import CtClipConfig
    from experiments.ct_clip.published import load_release
    from medrepro import config
    from medrepro.config_sections import TinyBertConfig
    from medrepro.tiny import save_bert

    saved = _upstream_clip()
    text = saved["text_config"]
    # A local text tower of the release's shape (its weights are replaced by the release's).
    encoder = save_bert(tmp_path / "cxr-bert", ["no effusion", "mild emphysema"], TinyBertConfig(
        hidden_size=text["hidden_size"], layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
        intermediate_size=text["intermediate_size"], vocab_size=text["vocab_size"],
        max_position=text["max_position_embeddings"], dropout=0.0), fill_vocab=True)
    ctvit = saved["ctvit"]
    cfg = config.load_config(CtClipConfig, Path("experiments/ct_clip/configs/smoke.yaml").resolve(), [
        f"model.dim={ctvit['dim']}", f"model.patch={ctvit['patch_size']}",
        f"model.temporal_patch={ctvit['temporal_patch_size']}", f"model.spatial_depth={ctvit['spatial_depth']}",
        f"model.temporal_depth={ctvit['temporal_depth']}", f"model.heads={ctvit['heads']}",
        f"model.dim_head={ctvit['dim_head']}", f"model.latent={saved['latent']}",
        f"data.shape=[{','.join(str(n) for n in saved['volume'].shape[2:])}]", f"encoders.cxr_bert.path={encoder}"])
    release = tmp_path / "CT-CLIP_v2.pt"
    torch.save(saved["state_dict"], release)
    model, tokenizer = load_release(cfg, release)
    assert len(tokenizer) == text["vocab_size"] and not model.training
    with torch.no_grad():
        image = F.normalize(model.encode_image(saved["volume"]), dim=-1)
        text = F.normalize(model.encode_text(saved["input_ids"], saved["attention_mask"]), dim=-1)
    torch.testing.assert_close(image, saved["image_latents"], rtol=0, atol=1e-5)
    torch.testing.assert_close(text, saved["text_latents"], rtol=0, atol=1e-5)

    torch.save({k: v for k, v in saved["state_dict"].items() if ".vq." not in k}, release)
    with pytest.raises(CheckpointError, match=re.escape("no 'visual_transformer.vq._codebook.embed'")):
        load_release(cfg, release)


def test_the_codebook_ranks_by_cosine_and_returns_the_rows_as_stored():
    """vector-quantize-pytorch 1.1.2 (upstream's pin) leaves codebook rows shorter than unit length: the code is
    the row of highest cosine, which a raw dot product would miss when a long row points further away."""
    from experiments.ct_clip.modeling_ct_clip import CosineCodebook

    codebook = CosineCodebook(2, 2).eval()
    codebook.embed.copy_(torch.tensor([[[0.1, 0.0], [3.0, 3.0]]]))  # a short row along x, a long one at 45°
    token = torch.tensor([[1.0, 0.2]])  # closer in angle to x; its dot product is larger with the long row
    assert torch.equal(codebook(token), torch.tensor([[0.1, 0.0]]))
