"""ct_clip's CTViT against upstream's: the same tensors under `UPSTREAM`'s names, and the same tokens.

tests/fixtures/ct_clip/upstream_ctvit.pt was made once from upstream's own code
(ibrahimethemhamamci/CT-CLIP at a2a155c, transformer_maskgit's ctvit.py and attention.py, with
vector-quantize-pytorch 1.8.1, einops and beartype, on the CPU) by the script stored in its "how" field:
a small CTViT with every parameter perturbed, its state dict and key shapes, a fixed input and
upstream's encoder tokens for it (`encode(to_patch_emb(video))`, before the VQ CT-CLIP leaves out).
"""

from pathlib import Path

import torch

from experiments.ct_clip.config import ModelConfig
from experiments.ct_clip.model import UPSTREAM, CTViT

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ct_clip" / "upstream_ctvit.pt"


def _upstream() -> tuple[dict, CTViT]:
    saved = torch.load(FIXTURE, weights_only=True)
    return saved, CTViT(ModelConfig(**saved["config"], latent=8))


def test_every_upstream_tensor_is_ours_or_named_as_unused_and_shapes_agree():
    saved, ours = _upstream()
    mapped = {UPSTREAM.ours(k): shape for k, shape in saved["shapes"].items() if UPSTREAM.ours(k) is not None}
    unused = sorted(k for k in saved["shapes"] if UPSTREAM.ours(k) is None)
    assert mapped == {k: list(v.shape) for k, v in ours.state_dict().items()}
    # Only what CT-CLIP never computes with, and nothing that holds a value.
    assert {k.split(".")[0] for k in unused} == {"vq", "to_patch_emb_first_frame", "to_pixels", "to_pixels_first_frame",
                                                 "enc_spatial_transformer", "enc_temporal_transformer"}
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
