"""cross_encoder's loader of the released SapBERT against upstream's own embedding and ranking.

tests/fixtures/cross_encoder/sapbert-tiny is a tiny BertModel, every tensor perturbed, saved by transformers'
`save_pretrained` (4.30.2, which still writes `embeddings.position_ids` as SapBERT's 4.4.2 did) with a
lower-case vocabulary whose tokenizer_config says do_lower_case=false. upstream_outputs.json holds what
upstream's code (cambridgeltl/sapbert at 1a528f6: DictionaryDataset, QueryDataset, Model_Wrapper.embed_dense,
get_score_matrix, retrieve_candidate_cuda, evaluation/utils.evaluate) computed for fixed cased names and
mentions, and, under "how", the script that made both.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from experiments.cross_encoder.config import IndexConfig
from experiments.cross_encoder.published import MAX_LENGTH, RELEASE, SAPBERT, load_release, most_frequent
from experiments.cross_encoder.records import Concept
from experiments.cross_encoder.retrieval import BiEncoder, NameIndex, build_index, name_rows
from medrepro.errors import CheckpointError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cross_encoder"
RELEASED = FIXTURES / "sapbert-tiny"
# Upstream pads to 25 tokens, we to the batch's longest: the [CLS] vectors (norm about 6) agree to 5e-7.
ATOL = 1e-5


@pytest.fixture(scope="module")
def upstream() -> dict:
    return json.loads((FIXTURES / "upstream_outputs.json").read_text())


@pytest.fixture(scope="module")
def released() -> BiEncoder:
    return load_release(RELEASED, batch_size=4)


def test_the_fixture_is_upstreams_release_layout(upstream):
    """The weights file holds exactly the tensors upstream's save wrote (names and shapes), and every one of
    them is either loaded or dropped by name: the pooler and the position ids, nothing else."""
    state = torch.load(RELEASED / "pytorch_model.bin", weights_only=True)
    assert {key: list(tensor.shape) for key, tensor in state.items()} == upstream["state_dict"]
    dropped = sorted(key for key in state if SAPBERT.ours(key) is None)
    assert dropped == ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]
    assert json.loads((RELEASED / "tokenizer_config.json").read_text())["do_lower_case"] is False


def test_our_embeddings_and_ranking_are_upstreams(released, upstream):
    """Names and mentions as cased strings: our encoder lower-cases, truncates at 25 tokens and reads [CLS],
    giving upstream's vectors; ranked by the raw inner product, upstream's top 10 per mention."""
    names = [name for _, name in upstream["dictionary"]]
    mentions = [mention for mention, _ in upstream["queries"]]
    vectors, queries = released.encode(names), released.encode(mentions)
    np.testing.assert_allclose(vectors, np.array(upstream["dictionary_embeddings"]), rtol=0, atol=ATOL)
    np.testing.assert_allclose(queries, np.array(upstream["query_embeddings"]), rtol=0, atol=ATOL)
    ranking = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    assert ranking.tolist() == upstream["ranking"]
    # The fixture tells the rules apart: cosine would rank otherwise, and without truncation at 25 tokens the
    # long name would be another vector.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.argsort(-(queries @ unit.T), axis=1, kind="stable")[:, :10].tolist() != upstream["ranking"]
    longer = BiEncoder(released.model, released.tokenizer, 4 * MAX_LENGTH, 4, unit=False).encode(names[-1:])
    assert np.abs(longer[0] - vectors[-1]).max() > 100 * ATOL


def test_the_index_returns_upstreams_concepts_and_accuracy(released, upstream):
    """Through the experiment's own name index (flat, inner product): each mention's distinct concepts in
    upstream's order of its names, upstream's acc@1, and its acc@5 counted over names."""
    cuis = list(dict.fromkeys(cui for cui, _ in upstream["dictionary"]))
    concepts = [Concept(cui, "", tuple(n for c, n in upstream["dictionary"] if c == cui), ()) for cui in cuis]
    names, owners = name_rows(concepts)
    index = NameIndex(build_index(released.encode(names), IndexConfig(kind="flat")), owners, names, concepts)
    queries = released.encode([m for m, _ in upstream["queries"]])
    found, _, _ = index.candidates(queries, 5)
    for ours, theirs in zip(found.tolist(), upstream["candidates"], strict=True):
        assert [cuis[c] for c in ours] == list(dict.fromkeys(theirs))[:5]
    gold = np.array([cuis.index(cui) for _, cui in upstream["queries"]])
    assert (found[:, 0] == gold).mean() == pytest.approx(upstream["accuracy"]["acc1"])
    # Upstream's acc@5 counts the first five names, as `evaluate_published`'s `_by_name` figure does.
    _, rows = index.index.search(queries, 5)
    assert (owners[rows] == gold[:, None]).any(axis=1).mean() == pytest.approx(upstream["accuracy"]["acc5"])


def test_safetensors_and_a_bert_prefix_load_the_same(released, upstream, tmp_path):
    """The release's safetensors copy is read before the pickle; a BERT saved inside a task model (`bert.`
    names, pretraining heads) is the same model."""
    release = tmp_path / "release"
    shutil.copytree(RELEASED, release)
    state = torch.load(release / "pytorch_model.bin", weights_only=True)
    (release / "pytorch_model.bin").unlink()
    save_file({f"bert.{key}": tensor.contiguous() for key, tensor in state.items()}
              | {"cls.predictions.bias": torch.zeros(3)}, release / "model.safetensors")
    vectors = load_release(release, 4).encode([name for _, name in upstream["dictionary"]])
    np.testing.assert_allclose(vectors, np.array(upstream["dictionary_embeddings"]), rtol=0, atol=ATOL)


INTERMEDIATE = "encoder.layer.0.intermediate.dense.weight"


@pytest.mark.parametrize("change, named", [
    (lambda s: s.update({"encoder.layer.1.output.dense.weights": s.pop("encoder.layer.1.output.dense.weight")}),
     "tensor 'encoder.layer.1.output.dense.weights' has no place"),
    (lambda s: s.update({INTERMEDIATE: s[INTERMEDIATE][:32]}),
     "tensor 'encoder.layer.0.intermediate.dense.weight' has shape [32, 32]"),
    (lambda s: s.pop("embeddings.LayerNorm.bias"), "first 'embeddings.LayerNorm.bias'"),
])
def test_a_renamed_reshaped_or_missing_tensor_is_one_line_naming_it(change, named, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(RELEASED, release)
    state = torch.load(release / "pytorch_model.bin", weights_only=True)
    change(state)
    torch.save(state, release / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=re.escape(named)) as refused:
        load_release(release, 4)
    assert "\n" not in str(refused.value)


def test_a_directory_without_weights_or_of_another_model_is_refused(tmp_path):
    release = tmp_path / "release"
    shutil.copytree(RELEASED, release)
    (release / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or pytorch_model\.bin in this directory"):
        load_release(release, 4)
    with pytest.raises(CheckpointError, match=re.escape(f"not a directory; --weights takes {RELEASE}")):
        load_release(RELEASED / "pytorch_model.bin", 4)
    shutil.copy(RELEASED / "pytorch_model.bin", release)
    config = json.loads((release / "config.json").read_text())
    (release / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(CheckpointError, match="model_type 'roberta', expected 'bert'"):
        load_release(release, 4)
    (release / "config.json").unlink()
    with pytest.raises(CheckpointError, match=re.escape("no config.json")):
        load_release(release, 4)


def test_a_pickle_that_needs_code_is_refused_unread(tmp_path):
    release = tmp_path / "release"
    shutil.copytree(RELEASED, release)
    torch.save({"model": torch.nn.Linear(2, 2)}, release / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="the pickle needs code to load"):
        load_release(release, 4)


def test_the_trivial_linker_answers_the_most_frequent_training_concepts():
    assert most_frequent(np.array([3, 1, 3, 2, 1, 3]), 5, 3).tolist() == [3, 1, 2]
    assert most_frequent(np.array([4]), 5, 3).tolist() == [4, 0, 1]  # ties: the lower index first
