"""exmed_bert's released weights against upstream's own code: tests/fixtures/exmed_bert/ holds a tiny
ExMedBertForMaskedLM saved by upstream (save_pretrained, vocabularies pickled by their `save`), two fixed
patients, upstream's encoding of them and its outputs (how.json says how it was made). Loaded through
`published`, our model gives upstream's masked-code logits within 1e-5 and its PLOS logits (sums over
32 positions, about 100 in size) within 2e-4, absolute; the vocabularies are read without running code."""

import json
import pickle
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from experiments.exmed_bert import published
from medrepro.errors import CheckpointError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "exmed_bert"
RELEASE = FIXTURE / "release"
INPUTS = {"tokens": "masked_input_ids", "types": "entity_ids", "ages": "age_ids", "visits": "position_ids",
          "sex": "sex_ids", "state": "state_ids", "attention": "attention_mask"}


@pytest.fixture(scope="module")
def case() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "case.safetensors")


def outputs(release: published.Release, case: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    model = published.release_model(release, RELEASE)
    with torch.no_grad():
        return model({ours: case[theirs] for ours, theirs in INPUTS.items()})


def test_the_release_loads_strictly_and_gives_upstreams_outputs(case):
    logits, plos = outputs(published.read_release(RELEASE), case)
    torch.testing.assert_close(logits, case["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(plos, case["plos_logits"], rtol=0, atol=2e-4)


def test_the_suites_own_architecture_misses_upstreams_outputs(case):
    """The tolerances separate the architectures: torch's LayerNorm eps (1e-5 for BERT's 1e-12) moves the
    logits beyond them, and a PLOS head pooling real positions only moves its logits far beyond."""
    release = published.read_release(RELEASE)
    release.config["layer_norm_eps"] = 1e-5
    logits, _ = outputs(release, case)
    assert (logits - case["logits"]).abs().max() > 3e-5
    release = published.read_release(RELEASE)
    model = published.release_model(release, RELEASE)
    model.plos_over_padding = False
    with torch.no_grad():
        _, plos = model({ours: case[theirs] for ours, theirs in INPUTS.items()})
    assert (plos - case["plos_logits"]).abs().max() > 1.0


def test_vocabularies_are_read_as_data_without_upstreams_code():
    v = published.read_vocabularies(RELEASE)
    assert not any(name == "exmed_bert" or name.startswith("exmed_bert.") for name in sys.modules)
    assert v.codes[:6] == ["PAD", "UNK", "CLS", "SEP", "MASK", "NA"]
    assert v.codes[6:8] == ["A10BA", "A10BB"] and v.entities[6] == "atc" and v.entities[-1] == "phewas"
    assert v.entity_ids == {"default": 0, "atc": 1, "phewas": 2}
    assert v.icd_to_phecode["E11.65"] == "250.2"
    # AgeDict's labels are numpy float64 scalars in the pickle: 0.0, 0.1, ... 110.9 after PAD and UNK.
    assert v.ages[:5] == ["PAD", "UNK", 0.0, 0.1, 0.2] and v.ages[-1] == 110.9 and len(v.ages) == 1112
    assert v.sexes == ["PAD", "UNK", "MALE", "FEMALE"] and v.states == ["PAD", "UNK", "CA", "NY", "TX"]


def test_patients_encode_as_upstreams_patient_class(case):
    """The fixture's patients in the import format (7-character ATC, ICD-10-CM, M/F, a state the release
    lacks, a code without a phecode) give upstream Patient's inputs. Upstream shuffles the codes within a
    visit, which shares position, age, sex and state, so positions are compared sorted."""
    release = published.read_release(RELEASE)
    columns = ("visits", "tokens", "types", "ages", "sex", "state", "attention")
    theirs_keys = ("position_ids", "input_ids", "entity_ids", "age_ids", "sex_ids", "state_ids", "attention_mask")
    counts: Counter = Counter()
    for row, patient in enumerate(json.loads((FIXTURE / "patients.json").read_text())):
        visits: dict[str, list[str]] = {}
        for kind, key in (("icd10cm", "diagnoses"), ("atc", "prescriptions")):
            for event in patient[key]:
                visits.setdefault(event["date"], []).append(f"{event['code']}:{kind}")
        ordered = [(int(date[:4]) - patient["birth_year"], visits[date]) for date in sorted(visits)]
        ours = published.encode(ordered, patient["sex"], patient["state"], release.vocabularies, release.length,
                                counts)
        theirs = [case[k][row].tolist() for k in theirs_keys]
        positions = sorted(zip(*(ours[c] for c in columns), strict=True))
        assert positions == sorted(zip(*theirs, strict=True)), patient["patient_id"]
    assert counts["icd10cm/unknown"] == 1 and counts["state/unknown"] == 1


def copy_release(tmp_path: Path) -> Path:
    release = tmp_path / "release"
    shutil.copytree(RELEASE, release)
    return release


def refused(release: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        published.release_model(published.read_release(release), release)
    message = str(e.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_a_renamed_or_reshaped_tensor_is_refused_with_one_line(tmp_path):
    release = copy_release(tmp_path)
    weights = release / "pytorch_model.bin"
    tensors = torch.load(weights, weights_only=True)
    tensors["bert.embeddings.code_embedding.weight"] = tensors.pop("bert.embeddings.code_embeddings.weight")
    torch.save(tensors, weights)
    assert "'bert.embeddings.code_embedding.weight'" in refused(release)

    tensors = torch.load(RELEASE / "pytorch_model.bin", weights_only=True)
    tensors["plos_classifier.los_classifier.weight"] = tensors["plos_classifier.los_classifier.weight"][:, :15]
    torch.save(tensors, weights)
    message = refused(release)
    assert "'plos_classifier.los_classifier.weight'" in message and "[2, 15]" in message

    tensors = torch.load(RELEASE / "pytorch_model.bin", weights_only=True)
    del tensors["bert.encoder.layer.1.attention.self.key.bias"]
    torch.save(tensors, weights)
    assert "'bert.encoder.layer.1.attention.self.key.bias'" in refused(release)


class RunsCode:
    def __reduce__(self):
        return print, ("unpickling ran code",)


def test_a_pickle_that_needs_code_is_refused(tmp_path, capsys):
    release = copy_release(tmp_path)
    (release / "code_dict.pkl").write_bytes(pickle.dumps(RunsCode()))
    message = refused(release)
    assert "code_dict.pkl" in message and "builtins.print" in message
    assert "unpickling ran code" not in capsys.readouterr().out

    release = copy_release(tmp_path / "module")
    torch.save(torch.nn.Linear(2, 2), release / "pytorch_model.bin")
    assert "needs code" in refused(release)


def test_vocabularies_of_another_model_are_refused(tmp_path):
    release = copy_release(tmp_path)
    config = json.loads((release / "config.json").read_text())
    config["code_vocab_size"] += 1
    (release / "config.json").write_text(json.dumps(config))
    assert "code_vocab_size" in refused(release)
    shutil.copy(RELEASE / "config.json", release / "config.json")
    (release / "state_dict.pkl").unlink()
    assert "no StateDict pickle" in refused(release)
