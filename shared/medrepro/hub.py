"""Hub models without the hub: the published weights when they are on this machine, otherwise the
published architecture with random weights.

The full profiles name hub ids (PubMedBERT, BERT-base, BioBERT, SapBERT, CXR-BERT). Their `config.json`
and tokenizer settings are facts, shipped in `medrepro/architectures/<org>--<name>/` (each file
says where it was read), so a dry run builds every real-size architecture offline and loads it
through the same `from_pretrained` call that reads the real checkpoint. Only the weights and the
vocabulary's entries are made up: the vocabulary has the published size, holds every character of
the given corpus (nothing tokenizes to [UNK]) and is filled up with `[unusedN]` entries.
"""

import json
import os
import string
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from medrepro.config_sections import TinyBertConfig
from medrepro.errors import ConfigError

ARCHITECTURES = Path(__file__).with_name("architectures")
# Characters every stand-in vocabulary holds, whatever the corpus.
BASE_CORPUS = (string.ascii_letters + string.digits + string.punctuation + " ").split()


def architecture_dir(hub_id: str) -> Path:
    return ARCHITECTURES / hub_id.replace("/", "--")


def published_config(hub_id: str) -> dict:
    """The hub model's config.json as published."""
    path = architecture_dir(hub_id) / "config.json"
    if not path.is_file():
        known = ", ".join(sorted(p.name.replace("--", "/") for p in ARCHITECTURES.iterdir() if p.is_dir()))
        raise ConfigError(f"no architecture description for {hub_id!r} in {ARCHITECTURES} (known: {known}); "
                          "point the config at a local save_pretrained directory instead")
    return json.loads(path.read_text())


def cached_snapshot(hub_id: str) -> Path | None:
    """The hub model's directory in the local Hugging Face cache, if it was downloaded before."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def cached_open_clip_weights(model: str, tag: str) -> str | None:
    """open_clip's file for the pretrained `tag` of `model` when it is in the local Hugging Face cache
    (the files open_clip would fetch: the safetensors alternative first, then the named file)."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

    hf_hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "")
    if not hf_hub:
        return None
    repo, filename = os.path.split(hf_hub)  # "org/name/" names the default file
    for name in (*_get_safe_alternatives(filename or HF_WEIGHTS_NAME), filename or HF_WEIGHTS_NAME):
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


def local_or_stand_in(name: str, directory: Path, corpus: Iterable[str] = ()) -> tuple[Path, str]:
    """A local directory for the model `name` (a hub id or a directory) and what it holds: the directory
    itself, the cached published weights, or a random-weight stand-in of the published architecture
    built into `directory` (reused when already there)."""
    if Path(name).is_dir():
        return Path(name), "local directory"
    cached = cached_snapshot(name)
    if cached is not None:
        return cached, "published weights (local Hugging Face cache)"
    if not (directory / "config.json").is_file():
        build_stand_in(name, directory, corpus)
    return directory, "random weights, published architecture"


def build_stand_in(hub_id: str, directory: Path, corpus: Iterable[str] = ()) -> Path:
    """A `save_pretrained` directory with the published config.json and tokenizer settings of `hub_id`,
    random weights and a vocabulary of the published size."""
    from medrepro.tiny import save_bert

    published = published_config(hub_id)
    # A repository without tokenizer_config.json (BioBERT) leaves the tokenizer to the library's defaults.
    settings_file = architecture_dir(hub_id) / "tokenizer_config.json"
    tokenizer_settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    shape = TinyBertConfig(hidden_size=published["hidden_size"], layers=published["num_hidden_layers"],
                           heads=published["num_attention_heads"], intermediate_size=published["intermediate_size"],
                           vocab_size=published["vocab_size"], max_position=published["max_position_embeddings"],
                           lowercase=tokenizer_settings.get("do_lower_case", False),
                           dropout=published["hidden_dropout_prob"])
    save_bert(directory, [*BASE_CORPUS, *corpus], shape, fill_vocab=True,
              config_json=published, tokenizer_json=tokenizer_settings, pooler=True)
    if not settings_file.is_file():
        (directory / "tokenizer_config.json").unlink()
    return directory


def bert_parameter_count(hub_id: str, pooler: bool = True) -> int:
    """Parameters of the published BERT architecture (on the meta device: no memory, no time)."""
    published = published_config(hub_id)
    fields = {k: v for k, v in published.items() if k not in ("model_type", "architectures", "auto_map")}
    with torch.device("meta"):
        model = BertModel(BertConfig(**fields), add_pooling_layer=pooler)
    return sum(p.numel() for p in model.parameters())

