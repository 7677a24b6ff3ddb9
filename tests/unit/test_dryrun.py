"""The dry run's measurements: activation bytes, the memory projection, reference counts, stand-ins."""

import json

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, BertModel

from medrepro import dryrun, hub
from medrepro.config_sections import TinyBertConfig
from medrepro.errors import ConfigError
from medrepro.tiny import save_bert

GIB = dryrun.GIB


def test_saved_bytes_counts_what_autograd_keeps_for_backward():
    layer = nn.Linear(256, 128, bias=False)
    x = torch.randn(32, 256)
    # A linear layer keeps its input (32 × 256 fp32) for the weight gradient, nothing for its weight.
    _, saved = dryrun.saved_bytes(lambda: layer(x).sum())
    assert saved == 32 * 256 * 4
    with torch.no_grad():
        assert dryrun.saved_bytes(lambda: layer(x).sum())[1] == 0


def test_views_of_the_weights_are_not_activations():
    # x @ W.t() saves W.t() (a view of the weight) and x: only x is activation memory.
    layer = nn.Linear(256, 128, bias=False)
    x = torch.randn(32, 256, requires_grad=True)
    _, with_views = dryrun.saved_bytes(lambda: (x @ layer.weight.t()).sum())
    _, activations = dryrun.saved_bytes(lambda: (x @ layer.weight.t()).sum(), layer)
    assert with_views == activations + 128 * 256 * 4
    assert activations == 32 * 256 * 4


def test_measure_separates_fixed_and_per_sample_activations():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    probe = dryrun.Probe("mlp", model, batch=lambda n: torch.randn(n, 64), loss=lambda m, b: m(b).square().mean(),
                         full_batch=8)
    result = dryrun.measure(probe, (1, 3))
    assert result["parameters"] == 64 * 64 + 64 + 64 + 1
    one, three = (s["activation_bytes"] for s in result["steps"])
    assert result["activation_per_sample_bytes"] == (three - one) / 2 > 0
    assert result["projection"]["batch"] == 8


def test_projection_verdicts_follow_the_memory_model():
    billion = 10**9
    # 1e9 trainable parameters: 16 GB of weights, gradients and AdamW moments.
    fits = dryrun.project(billion, billion, fixed=0, per_sample=0.1 * GIB, batch=4)
    assert fits["states_gib"] == pytest.approx(16 * billion / GIB)
    assert fits["devices"] == {"24": "fits", "40": "fits", "80": "fits"}
    # 2 GiB a sample at batch 32: only an 80 GB device takes a micro-batch of it.
    accumulate = dryrun.project(billion, billion, fixed=0, per_sample=2 * GIB, batch=32)
    assert accumulate["devices"]["24"].startswith("gradient accumulation")
    assert accumulate["devices"]["80"].startswith("gradient accumulation ×")
    micro = int(accumulate["devices"]["80"].split("micro-batch ")[1].rstrip(")"))
    assert dryrun.MARGIN * (16 * billion + micro * 2 * GIB) <= 80 * GIB
    assert dryrun.MARGIN * (16 * billion + (micro + 1) * 2 * GIB) > 80 * GIB
    assert dryrun.project(billion, billion, 0, 30 * GIB, 1)["devices"]["24"].startswith("activation checkpointing")
    assert dryrun.project(2 * billion, 2 * billion, 0, 1, 1)["devices"]["24"].startswith("does not fit")
    # Frozen parameters cost their weights only.
    assert dryrun.project(billion, 0, 0, 0, 1)["states_gib"] == pytest.approx(4 * billion / GIB)


def test_reference_check_tolerates_one_percent_or_a_documented_difference():
    reference = {"count": 1000, "source": "paper"}
    assert dryrun.check_reference("m", 1009, reference, "")["difference"] == pytest.approx(0.009)
    with pytest.raises(ConfigError, match=r"m has 1,020 parameters, \+2.00% from the reference 1,000 \(paper\)"):
        dryrun.check_reference("m", 1020, reference, "")
    documented = {**reference, "documented": "ours has a bigger head"}
    assert dryrun.check_reference("m", 1020, documented, "README: ours has a bigger head.")["documented"]
    with pytest.raises(ConfigError):
        dryrun.check_reference("m", 1020, documented, "a README that does not say it")
    with pytest.raises(ConfigError, match=r"no parameters\.m"):
        dryrun.check_reference("m", 1020, None, "")


def test_published_bert_architectures_have_the_published_sizes():
    # BERT-base: 110M in the BERT paper; the exact count with its pooler from config.json.
    assert hub.bert_parameter_count("bert-base-uncased") == 109_482_240
    assert hub.bert_parameter_count("microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext") == 109_482_240
    assert hub.bert_parameter_count("cambridgeltl/SapBERT-from-PubMedBERT-fulltext") == 109_482_240
    # BioBERT's cased vocabulary has 28,996 entries.
    assert hub.bert_parameter_count("dmis-lab/biobert-base-cased-v1.1") == 109_482_240 - (30522 - 28996) * 768
    with pytest.raises(ConfigError, match="no architecture description for 'org/unknown'"):
        hub.published_config("org/unknown")


def test_a_filled_vocabulary_has_the_published_size_and_keeps_the_published_fields(tmp_path):
    shape = TinyBertConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=300, max_position=64)
    published = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 300, "projection_size": 7}
    save_bert(tmp_path / "m", ["left eye drusen", "Right eye"], shape, fill_vocab=True, config_json=published,
              tokenizer_json={"do_lower_case": True, "model_max_length": 64}, pooler=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert len(tokenizer) == 300
    assert tokenizer.convert_ids_to_tokens(299).startswith("[unused")
    assert "[UNK]" not in tokenizer.tokenize("left eye drusen")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["projection_size"] == 7 and saved["architectures"] == ["BertForMaskedLM"]
    model = BertModel.from_pretrained(tmp_path / "m")
    assert model.pooler is not None and model.config.vocab_size == 300
    with pytest.raises(ValueError, match="more than 8"):
        save_bert(tmp_path / "small", ["abcdefgh"], TinyBertConfig(vocab_size=8), fill_vocab=True)
