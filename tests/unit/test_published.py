"""medrepro.published: a release is read without running its code and loaded strictly through a key map; a
renamed, reshaped, missing or extra tensor, a truncated file and a pickle that needs code are one line each."""

import collections
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from medrepro.errors import CheckpointError
from medrepro.published import KeyMap, load_published, read_tensors

WHAT = "the tiny release"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
        self.head = nn.Linear(3, 2, bias=False)


# The release names the encoder "backbone", numbers its layers from 1, and carries a pooler we never run.
MAP = KeyMap(renames=((r"^\.backbone\.", ".encoder."), (r"\.layer([12])\.", lambda m: f".{int(m.group(1)) - 1}."),
                      (r"\.gamma$", ".weight")),
             dropped=r"^pooler\.")


def release() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"backbone.layer1.weight": torch.randn(3, 4), "backbone.layer1.bias": torch.randn(3),
            "backbone.layer2.gamma": torch.randn(3), "backbone.layer2.bias": torch.randn(3),
            "head.weight": torch.randn(2, 3, dtype=torch.float16), "pooler.dense.weight": torch.randn(3, 3)}


def test_key_map_renames_in_order_and_names_the_dropped():
    assert MAP.ours("backbone.layer2.gamma") == "encoder.1.weight"
    assert MAP.ours("pooler.dense.weight") is None
    assert MAP.ours("head.weight") == "head.weight"


def test_a_release_loads_every_tensor_where_the_map_says_cast_to_the_models_dtype():
    model, tensors = Tiny(), release()
    counts = load_published(model, tensors, MAP, "release.pt", WHAT)
    assert counts == {"loaded": 5, "dropped": 1}
    assert torch.equal(model.encoder[1].weight, tensors["backbone.layer2.gamma"])
    assert model.head.weight.dtype == torch.float32
    assert torch.equal(model.head.weight, tensors["head.weight"].float())


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update({"backbone.layer1.kernel": t.pop("backbone.layer1.weight")}),
     "tensor 'backbone.layer1.kernel' has no place in the tiny release (mapped to 'encoder.0.kernel'"),
    (lambda t: t.update({"backbone.layer1.weight": torch.zeros(4, 3)}),
     "tensor 'backbone.layer1.weight' has shape [4, 3], the tiny release expects [3, 4] for 'encoder.0.weight'"),
    (lambda t: t.pop("head.weight"), "lacks 1 tensor(s) the tiny release needs, first 'head.weight'"),
    (lambda t: t.update({"backbone.layer2.weight": torch.zeros(3)}),
     "tensors 'backbone.layer2.gamma' and 'backbone.layer2.weight' both map to 'encoder.1.weight'"),
])
def test_a_renamed_reshaped_missing_or_doubled_tensor_is_refused_by_name(change, message):
    model, tensors = Tiny(), release()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    change(tensors)
    with pytest.raises(CheckpointError, match=re.escape(message)) as refused:
        load_published(model, tensors, MAP, "release.pt", WHAT)
    assert "\n" not in str(refused.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a refused load changed the model"


def test_reads_safetensors_torch_files_directories_and_nested_state_dicts(tmp_path):
    tensors = {k: v.contiguous() for k, v in release().items()}
    save_file(tensors, tmp_path / "model.safetensors")
    torch.save({"state_dict": tensors, "epoch": 3}, tmp_path / "nested.pt")
    torch.save(collections.OrderedDict(tensors), tmp_path / "plain.bin")
    for source, inside in [(tmp_path / "model.safetensors", ()), (tmp_path, ()),
                           (tmp_path / "nested.pt", ("state_dict",)), (tmp_path / "plain.bin", ())]:
        read = read_tensors(source, WHAT, names=("pytorch_model.bin", "model.safetensors"), inside=inside)
        assert read.keys() == tensors.keys() and all(torch.equal(read[k], tensors[k]) for k in tensors)


class Payload:
    """Stands for code a pickle would run to rebuild an object."""


def test_unreadable_sources_are_one_line_each(tmp_path):
    tensors = release()
    torch.save(tensors, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
    # Cut inside the tensor data instead of before the archive's index: torch fails with an OSError.
    torch.save({"w": torch.zeros(4000)}, tmp_path / "large.pt")
    (tmp_path / "cut_late.pt").write_bytes((tmp_path / "large.pt").read_bytes()[:-100])
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "whole.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "whole.safetensors").read_bytes()[:100])
    torch.save({"model": Payload()}, tmp_path / "code.pt")
    torch.save({"state_dict": tensors, "epoch": 3}, tmp_path / "nested.pt")
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "missing.pt", "no such file"), (tmp_path / "cut.pt", "not a readable torch file"),
             (tmp_path / "cut_late.pt", "not a readable torch file"),
             (tmp_path / "cut.safetensors", "not a readable safetensors file"),
             (tmp_path / "code.pt", "the pickle needs code to load"),
             (tmp_path / "nested.pt", "entries that are not tensors (epoch, state_dict)"),
             (tmp_path / "empty", "no pytorch_model.bin in this directory (found nothing)")]
    for source, message in cases:
        with pytest.raises(CheckpointError, match=re.escape(message)) as refused:
            read_tensors(source, WHAT, names=("pytorch_model.bin",))
        assert "\n" not in str(refused.value) and str(source) in str(refused.value), refused.value
