"""The authors' released RET-CLIP in our model, for `evaluate --weights`.

The release (upstream README, "Pretrained Model": ViT-B-16 with RoBERTa-wwm-ext-base-chinese) is a raw
state dict of upstream's CLIP: upstream's training resumes from it with
`{k: v for k, v in checkpoint.items() if "bert.pooler" not in k}` and a strict load into the DDP-wrapped
model (RET_CLIP/training/main.py), so its names may carry DDP's `module.` prefix. It is read here with
`weights_only` and loaded through `model.UPSTREAM`, strictly.

What the release needs that our trained variants do not use, selected here rather than by their config:
- the image tower with QuickGELU (upstream's ResidualAttentionBlock), whatever `model.quick_gelu` says;
- the text tower: Chinese RoBERTa-wwm-ext, a BERT, whose config.json and vocab.txt come from
  `encoders.chinese_roberta.path` (read offline; the release carries the weights only);
- upstream's tokenisation (`ReleaseTokenizer`): its text clean-up, Google's BERT tokenizer over that
  vocab.txt, [CLS] ... [SEP] cut to the context length and padded with id 0;
- upstream's eval image transform (`release_transform`): a bicubic resize of the whole image to a square
  ("squash", no crop), then OpenAI CLIP's mean and std;
- Chinese prompts (prompts_zh.yaml), since the release was trained on Chinese reports.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor
from transformers import BertTokenizer

from experiments.retclip.config import RetClipConfig
from experiments.retclip.model import UPSTREAM, RetClip, build_towers, vision_config
from medrepro.config_sections import encoder_path
from medrepro.errors import ConfigError
from medrepro.published import load_published, read_tensors

RELEASE = "RET-CLIP's released model (the state dict of upstream's CLIP: ViT-B-16, Chinese RoBERTa-wwm-ext)"
TEXT_TOWER = "chinese_roberta"  # encoders.<this>.path: the release's text tower's config.json and vocab.txt
PROMPTS = Path(__file__).with_name("prompts_zh.yaml")


class ReleaseTokenizer:
    """Upstream's tokenisation: `tokenize([_preprocess_text(t) for t in texts], context_length)` of
    RET_CLIP/clip/utils.py and RET_CLIP/training/data.py. The clean-up lowercases and straightens curly
    double quotes (the vocabulary has no “ or ”); Google's BERT tokenizer lowercases, strips accents and
    splits every CJK character; ids are [CLS] + the first context_length - 2 tokens + [SEP], then zeros."""

    def __init__(self, vocab_file: Path, context_length: int):
        # transformers' BertTokenizer: the same basic and WordPiece rules as upstream's FullTokenizer
        # (do_lower_case=True, its default), over the same vocabulary file.
        self.bert = BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
        self.context_length = context_length
        self.pad_token_id = 0  # upstream pads with zeros; its model masks the id of [PAD], 0 in its vocabulary

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            clean = text.lower().replace("“", '"').replace("”", '"')
            tokens = self.bert.convert_tokens_to_ids(self.bert.tokenize(clean))[:self.context_length - 2]
            row_ids = [self.bert.cls_token_id, *tokens, self.bert.sep_token_id]
            ids[row, :len(row_ids)] = torch.tensor(row_ids)
        return ids


def release_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Upstream's eval transform (RET_CLIP/clip/utils.py `image_transform`, the same in training/data.py
    without augmentation): the whole image resized to image_size², bicubic, so a non-square image is
    squashed rather than cropped; RGB; OpenAI CLIP's mean and std."""
    return Compose([
        Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
        _rgb,
        ToTensor(),
        Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
    ])


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def load_release(cfg: RetClipConfig, weights: Path) -> tuple[RetClip, ReleaseTokenizer, Callable]:
    """The released model in eval mode, upstream's tokenizer and its image transform. The image tower is
    `model.vision_model` with `model.vision_cfg` (ViT-B-16 at 224 in the full profile, as released), the heads
    `model.embed_dim` wide; the text tower's config and vocabulary come from `encoders.chinese_roberta.path`."""
    tensors = read_tensors(weights, RELEASE)
    encoder = encoder_path(cfg.encoders, TEXT_TOWER)
    vocab = Path(encoder) / "vocab.txt"
    if not vocab.is_file():
        raise ConfigError(f"encoders.{TEXT_TOWER}.path: {encoder} has no vocab.txt; give a local directory "
                          "holding Chinese RoBERTa-wwm-ext's config.json and vocab.txt")
    vision = vision_config(cfg.model)
    visual, text, _ = build_towers(vision, cfg.model.embed_dim, True, encoder, cfg.model.context_length,
                                   pretrained_text=False)
    tokenizer = ReleaseTokenizer(vocab, cfg.model.context_length)
    if text.config.pad_token_id != tokenizer.pad_token_id:
        raise ConfigError(f"encoders.{TEXT_TOWER}.path: {encoder}/config.json has pad_token_id "
                          f"{text.config.pad_token_id}; upstream pads with and masks id 0")
    model = RetClip(visual, text, text.config.hidden_size, cfg.model.embed_dim, cfg.model.init_logit_scale,
                    cfg.model.max_logit_scale)
    load_published(model, tensors, UPSTREAM, weights, RELEASE)
    return model.eval(), tokenizer, release_transform(visual.image_size[0])
