"""The authors' released CT-CLIP in our model, for `evaluate --weights`.

The release is the CTCLIP module's state dict (`torch.save(clip.state_dict())`; upstream's zero-shot script
reads it with `clip.load(path)`), read here with `weights_only`. Its architecture is the one upstream's
zero-shot script builds: our full profile's CTViT, CXR-BERT as the text tower with its embeddings resized
to the tokenizer's length, and the VQ codebook CTViT applies before the CLIP head, which ours applies at
inference only (`modeling_ct_clip.CosineCodebook`). The tensors load through `model.UPSTREAM`, strictly.
"""

from pathlib import Path

from transformers import BertConfig, BertTokenizerFast

from experiments.ct_clip import modeling_ct_clip as modeling
from experiments.ct_clip.config import CtClipConfig
from experiments.ct_clip.model import UPSTREAM, clip_config
from medrepro.config_sections import encoder_path
from medrepro.errors import CheckpointError
from medrepro.published import load_published, read_tensors

RELEASE = "CT-CLIP's zero-shot model (the CTCLIP state dict released with CT-RATE)"
CODEBOOK = "visual_transformer.vq._codebook.embed"
WORD_EMBEDDINGS = "text_transformer.embeddings.word_embeddings.weight"
TEXT_TOWER = "cxr_bert"  # the variant whose encoder the release's text tower is


def load_release(cfg: CtClipConfig, weights: Path) -> tuple[modeling.CTClipModel, BertTokenizerFast]:
    """The released model in eval mode, and the text tower's tokenizer (from `encoders.cxr_bert.path`, read
    offline: the release carries the weights, not the tokenizer or the BERT config)."""
    tensors = read_tensors(weights, RELEASE)
    for key in (CODEBOOK, WORD_EMBEDDINGS):
        if key not in tensors:
            raise CheckpointError(f"{weights}: no {key!r}: expected {RELEASE}")
    encoder = encoder_path(cfg.encoders, TEXT_TOWER)
    text_config = BertConfig.from_pretrained(encoder)
    # Upstream resizes the text tower's embeddings to its tokenizer's length before training.
    text_config.vocab_size = tensors[WORD_EMBEDDINGS].shape[0]
    config = clip_config(cfg.model, tuple(cfg.data.shape), text_config)
    config.codebook_size = tensors[CODEBOOK].shape[1]
    model = modeling.CTClipModel(config)
    load_published(model, tensors, UPSTREAM, weights, RELEASE)
    return model.eval(), BertTokenizerFast.from_pretrained(encoder)
