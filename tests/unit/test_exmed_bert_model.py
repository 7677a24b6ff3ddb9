"""exmed_bert model and pretraining: presets, the transformers classes keeping the checkpoints' names,
initialisation, ClinVec loading, dynamic masking keyed by (seed, epoch, patient), and an exact resume of
pretraining."""

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.exmed_bert import clinvec, dataset, pretrain
from experiments.exmed_bert import modeling_exmed_bert as modeling
from experiments.exmed_bert.config import ExMedBertConfig, ModelConfig, PathsConfig
from experiments.exmed_bert.model import (
    PRESETS,
    Encoder,
    EndpointModel,
    PretrainModel,
    count_parameters,
    encoder_config,
    initialise,
    load_clinvec,
    model_inputs,
)
from experiments.exmed_bert.prepare import prepare
from medrepro.config_sections import TrackingConfig, TrainConfig
from medrepro.errors import CheckpointError, DataError, RunError
from medrepro.rundir import RunDir


def test_presets_grow_and_are_counted_from_the_model():
    counts = pretrain.parameter_counts(vocab_size=1000)
    assert list(counts) == list(PRESETS)
    assert counts["tiny"] < counts["small"] < counts["medium"] < counts["large"]
    model = PretrainModel(Encoder(ModelConfig(preset="tiny"), 1000, 4, 60), 1000, True)
    assert counts["tiny"] == count_parameters(model)
    custom = Encoder(ModelConfig(preset="custom", hidden_size=48, layers=3, heads=4, intermediate_size=96), 10, 3, 3)
    assert custom.config.hidden_size == 48 and len(custom.layers.layers) == 3


# The endpoint model's state dict as the classes before the transformers ones named it (tiny preset, 50
# tokens, 4 sexes, 5 states, 8-d ClinVec vectors): the runs' checkpoints load into the new classes.
ENDPOINT_KEYS = {
    "encoder.code_vectors": (50, 8), "encoder.code.weight": (50, 32), "encoder.code_type.weight": (4, 32),
    "encoder.age.weight": (121, 32), "encoder.sex.weight": (4, 32), "encoder.state.weight": (5, 32),
    "encoder.projection.weight": (32, 8), "encoder.norm.weight": (32,), "encoder.norm.bias": (32,),
    "encoder.layers.layers.0.self_attn.in_proj_weight": (96, 32),
    "encoder.layers.layers.0.self_attn.in_proj_bias": (96,),
    "encoder.layers.layers.0.self_attn.out_proj.weight": (32, 32),
    "encoder.layers.layers.0.self_attn.out_proj.bias": (32,),
    "encoder.layers.layers.0.linear1.weight": (64, 32), "encoder.layers.layers.0.linear1.bias": (64,),
    "encoder.layers.layers.0.linear2.weight": (32, 64), "encoder.layers.layers.0.linear2.bias": (32,),
    "encoder.layers.layers.0.norm1.weight": (32,), "encoder.layers.layers.0.norm1.bias": (32,),
    "encoder.layers.layers.0.norm2.weight": (32,), "encoder.layers.layers.0.norm2.bias": (32,),
    "classifier.weight": (1, 32), "classifier.bias": (1,),
}


def test_the_transformers_classes_keep_the_checkpoints_names_and_shapes():
    trained = EndpointModel(Encoder(ModelConfig(preset="tiny"), 50, 4, 5, 8))
    exported = modeling.ExMedBertForSequenceClassification(encoder_config(ModelConfig(preset="tiny"), 50, 4, 5, 8))
    for model in (trained, exported):
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ENDPOINT_KEYS


def test_save_pretrained_round_trip_rebuilds_the_visit_table_and_the_outputs(tmp_path):
    """The visit table is not saved: loading rebuilds it from the config, and the loaded model computes
    what the trained one does."""
    torch.manual_seed(0)
    trained = EndpointModel(Encoder(ModelConfig(preset="tiny"), 30, 4, 3))
    initialise(trained, "xavier")
    exported = modeling.ExMedBertForSequenceClassification(trained.config)
    exported.load_state_dict(trained.state_dict())
    exported.save_pretrained(tmp_path)
    loaded = modeling.ExMedBertForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded.encoder.visit_table, trained.encoder.visit_table, rtol=0, atol=0)
    records = [{"tokens": [2, 7, 9, 3, 11, 3], "types": [0, 1, 2, 0, 3, 0], "ages": [0, 50, 50, 50, 51, 51],
                "visits": [0, 1, 1, 1, 2, 2], "sex": 1, "state": 2, "endpoint": 1, "los": None},
               {"tokens": [2, 8, 3], "types": [0, 1, 0], "ages": [0, 70, 70], "visits": [0, 1, 1], "sex": 2,
                "state": 1, "endpoint": 0, "los": 3.0}]
    batch = dataset.pad_batch(records, 7)
    # To rounding, not bit for bit: from_pretrained leaves the weights in the file's memory map, at other
    # alignments than the trained model's, and on some CPUs the matrix kernels then round differently
    # (measured 1.2e-7 on an AMD EPYC; 0 where the weights are copied to fresh memory first).
    with torch.no_grad():
        torch.testing.assert_close(loaded(**model_inputs(batch)).logits[:, 0], trained.eval()(batch),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["orthogonal", "xavier", "kaiming"])
def test_initialisation_methods(method):
    torch.manual_seed(0)
    model = PretrainModel(Encoder(ModelConfig(preset="small"), 50, 3, 3), 50, True)
    initialise(model, method)
    weight = model.transform[0].weight
    if method == "orthogonal":
        torch.testing.assert_close(weight @ weight.T, torch.eye(64), atol=1e-5, rtol=0)
    assert model.transform[0].bias.abs().sum() == 0 and model.encoder.code.weight[dataset.PAD].abs().sum() == 0
    # The sinusoidal visit table is fixed, not a parameter.
    assert "visit_table" not in dict(model.named_parameters())


def test_clinvec_rows_are_loaded_and_fresh_rows_kept():
    encoder = Encoder(ModelConfig(preset="tiny"), 8, 3, 3)
    before = encoder.code.weight.detach().clone()
    vectors = np.zeros((8, 32), dtype=np.float32)
    vectors[5] = np.arange(32)
    initialised = np.zeros(8, dtype=bool)
    initialised[5] = True
    load_clinvec(encoder, vectors, initialised)
    row = encoder.code.weight[5].detach().numpy()
    assert np.corrcoef(row, np.arange(32))[0, 1] > 0.999
    torch.testing.assert_close(encoder.code.weight[6], before[6])


def test_masking_is_keyed_by_seed_epoch_and_patient():
    records = [{"tokens": [2, *range(5, 45), 3], "types": [0, *[1] * 40, 0]} for _ in range(3)]
    data = pretrain.MaskedPatients(records, 60, 0.15, seed=7)
    first = [data[i]["labels"] for i in range(3)]
    assert [data[i]["labels"] for i in (2, 1, 0)] == first[::-1]  # order of access does not matter
    assert first[0] != first[1]  # patients differ
    data.set_epoch(1)
    assert data[0]["labels"] != first[0]  # epochs differ
    data.set_epoch(0)
    assert data[0]["labels"] == first[0]
    labels, inputs = np.array(first[0]), np.array(data[0]["tokens"])
    assert labels[0] == -100 and labels[-1] == -100  # specials are never masked
    masked = labels != -100
    assert masked.any() and (inputs[masked] == dataset.MASK).mean() > 0.5


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> ExMedBertConfig:
    root = tmp_path_factory.mktemp("exmed")
    cfg = ExMedBertConfig(paths=PathsConfig(**{f.name: str(root / f.name) for f in dataclasses.fields(PathsConfig)}))
    cfg.data.synthetic_patients = 120
    cfg.pretrain.train = TrainConfig(epochs=2, batch_size=16, lr=3e-3, eval_every_epochs=1.0, save_every_steps=2,
                                     keep_last=100, log_every_steps=2, tracking=TrackingConfig(tensorboard=False))
    prepare(cfg)
    clinvec.clinvec_stage(cfg)
    return cfg


def test_pretraining_resumes_exactly(prepared, tmp_path):
    cfg = prepared
    full = RunDir(tmp_path / "full")
    pretrain.pretrain_one(cfg, "clinvec_init", full)
    steps = full.step_checkpoints()
    assert len(steps) >= 3
    # An interrupted run: only a mid-run checkpoint (in the middle of an epoch) is left.
    middle = steps[1]
    resumed = RunDir(tmp_path / "resumed")
    resumed.checkpoints.mkdir(parents=True)
    for path in (middle, middle.with_name(middle.name + ".sha256")):
        shutil.copy(path, resumed.checkpoints / path.name)
    pretrain.pretrain_one(cfg, "clinvec_init", resumed, resume="latest")
    a = torch.load(full.final, weights_only=True)["model"]
    b = torch.load(resumed.final, weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pretraining_hints_name_what_pretrain_accepts(prepared, tmp_path):
    """A resume under another config names the key `pretrain` reads (pretrain.train.…, no --out, which it
    does not have); an unfinished pretraining run points at `pretrain --resume latest`."""
    run = RunDir(tmp_path / "runs" / "random_init")
    pretrain.pretrain_one(prepared, "random_init", run)
    changed = dataclasses.replace(prepared, pretrain=dataclasses.replace(
        prepared.pretrain, train=dataclasses.replace(prepared.pretrain.train, lr=1e-2)))
    with pytest.raises(CheckpointError) as e:
        pretrain.pretrain_one(changed, "random_init", run, resume="latest")
    assert "lr: 0.003 → 0.01" in str(e.value) and "pass pretrain.train.allow_config_change=true" in str(e.value)
    assert "--out" not in str(e.value)
    run.complete_file.unlink()
    unfinished = dataclasses.replace(prepared, paths=dataclasses.replace(prepared.paths,
                                                                         pretrained=str(run.path.parent)))
    with pytest.raises(RunError, match=r"finish it with `medrepro exmed_bert pretrain --resume latest`$"):
        pretrain.pretrained_encoder(unfinished, "random_init")


def test_learned_projection_keeps_128_d_vectors_for_the_model(prepared):
    cfg = dataclasses.replace(prepared, clinvec=dataclasses.replace(prepared.clinvec, resize="learned_projection"),
                              paths=dataclasses.replace(prepared.paths, clinvec=prepared.paths.clinvec + "-lp"))
    clinvec.clinvec_stage(cfg)
    vocab = dataset.read_vocab(cfg.paths.prepared)
    model = pretrain.build(cfg, "clinvec_init", vocab)
    assert model.encoder.code_vectors.shape == (len(vocab.tokens), clinvec.DIM)
    assert model.encoder.projection.weight.shape == (32, clinvec.DIM)
    batch = dataset.pad_batch(dataset.read_split(cfg.paths.prepared, "val")[:4], 7)
    logits, plos = model(batch)
    assert logits.shape[-1] == len(vocab.tokens) and plos.shape == (4, 2)


def test_clinvec_stage_stops_at_zero_coverage_and_keeps_its_output(prepared, tmp_path):
    """A ClinVec release whose nodes are none of the cohort's codes nor their ancestors (here every code
    renamed) would make clinvec_init a second random_init: the stage stops with one line instead."""
    source = clinvec.source_directory(prepared)
    other = tmp_path / "clinvec"
    shutil.copytree(source, other)
    nodes = other / clinvec.NODES
    nodes.write_text(re.sub(r"^(?=\S+:(icd10cm|atc|cpt)\t)", "X", nodes.read_text(), flags=re.MULTILINE))
    before = (Path(prepared.paths.clinvec) / "vectors.npz").read_bytes()
    cfg = dataclasses.replace(prepared, clinvec=dataclasses.replace(prepared.clinvec, directory=str(other)))
    with pytest.raises(DataError, match=r"ClinVec covers 0% of the \d+ codes \(atc 0%, cpt 0%, icd10cm 0%\), below "
                                        r"clinvec.min_coverage 50%") as e:
        clinvec.clinvec_stage(cfg)
    assert "\n" not in str(e.value)
    assert (Path(prepared.paths.clinvec) / "vectors.npz").read_bytes() == before
