"""The authors' released ExMed-BERT in our model, for `evaluate --weights`.

The release (Zenodo record 7324178, upstream README "Pre-trained model") is the pretraining model, the
directory upstream's scripts/pretrain-exmed-bert.py writes with `trainer.save_model`: `config.json` (its
`ExMedBertConfig`), the `ExMedBertForMaskedLM` weights (`pytorch_model.bin`, or `model.safetensors` from
newer transformers) and the vocabularies it was trained with, instances of exmed_bert.data.encoding's
CodeDict, AgeDict, SexDict and StateDict pickled by their `save` method. It holds no endpoint model.

Nothing from the release runs. The weights are read with `weights_only` (or safetensors); the pickled
vocabularies by `VocabularyReader`, an Unpickler whose `find_class` answers those four class names (under
upstream's package name and the older `src.data.encoding`, under which the repository's own
data/interim/code_dict.pkl was pickled) with a plain attribute holder, and numpy's float scalars (AgeDict's
labels) with a decoder of their 8 bytes; any other class stops the read with one line. A restricted
Unpickler rather than a pickletools walk: the same opcodes rebuild the same dicts and lists, with the
standard library doing the parsing.

The tensors load through `model.UPSTREAM` into `PretrainModel` built with the release's sizes and
upstream's architecture where it differs from the suite's defaults: LayerNorm eps 1e-12, the release's
own frozen position table, PLOS head summing over padding too (`modeling_exmed_bert`, `model.PretrainModel`).

Patients are encoded as upstream's Patient class encodes them (exmed_bert/data/patient.py, defaults
use_cls = use_sep = False, drop_duplicates, truncation keeping the last whole visits, padding to
max_length): per visit its codes (ICD-10-CM through the CodeDict's `icd_phewas_map` to phecodes, ATC at
the vocabulary's level), then the visit number from 1 as position, the age, sex and state on every real
position, 0 (PAD) on padding.
"""

import json
import math
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from experiments.exmed_bert import dataset
from experiments.exmed_bert import modeling_exmed_bert as modeling
from experiments.exmed_bert.model import UPSTREAM, PretrainModel, fuse_attention
from medrepro.errors import CheckpointError
from medrepro.published import load_published, read_tensors

RELEASE = ("upstream ExMed-BERT's pretrained model: a directory with config.json, pytorch_model.bin (or "
           "model.safetensors) and its CodeDict, AgeDict, SexDict and StateDict pickles")
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
VOCABULARIES = ("CodeDict", "AgeDict", "SexDict", "StateDict")
MODULES = ("exmed_bert.data.encoding", "src.data.encoding")
PICKLES = (".pkl", ".pickle", ".p")
# ExMedBertConfig fields the model is built from (exmed_bert/models/config.py).
CONFIG_KEYS = ("code_vocab_size", "number_of_codes", "age_vocab_size", "sex_vocab_size", "region_vocab_size",
               "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
               "max_position_embedding", "layer_norm_eps", "pad_token_id", "predict_los")
# Upstream's SexDict holds MALE and FEMALE; the import format writes M and F.
SEX_NAMES = {"F": "FEMALE", "M": "MALE"}


class _Vocabulary:
    """Stands in for an upstream dictionary class: unpickling only sets its attributes."""


class _Dtype:
    """Stands in for numpy.dtype: keeps the type code and byte order a scalar's bytes are read with."""

    def __init__(self, code: str, *_: object):
        self.code, self.order = code, "<"

    def __setstate__(self, state: tuple) -> None:
        self.order = state[1] if state[1] in "<>" else "<"


def _scalar(dtype: _Dtype, data: bytes) -> float | int:
    if dtype.code not in ("f8", "i8") or len(data) != 8:
        raise pickle.UnpicklingError(f"a numpy scalar of type {dtype.code!r}, not an 8-byte float or integer")
    return np.frombuffer(data, dtype=dtype.order + dtype.code)[0].item()


class VocabularyReader(pickle.Unpickler):
    """Reads upstream's pickled vocabularies as plain attributes; refuses every other class."""

    def find_class(self, module: str, name: str) -> object:
        if module in MODULES and name in VOCABULARIES:
            return type(name, (_Vocabulary,), {})
        if (module, name) == ("numpy", "dtype"):
            return _Dtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _scalar
        if (module, name) in (("builtins", "frozenset"), ("builtins", "set")):
            return {"frozenset": frozenset, "set": set}[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not one of upstream's vocabulary classes "
                                     f"({', '.join(VOCABULARIES)})")


def read_vocabulary(path: Path) -> tuple[str, dict]:
    """(class name, attributes) of one pickled upstream vocabulary."""
    try:
        with path.open("rb") as f:
            loaded = VocabularyReader(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path}: not read as one of upstream's vocabularies ({e}); expected {RELEASE}"
                              ) from None
    if not isinstance(loaded, _Vocabulary):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not an upstream vocabulary; "
                              f"expected {RELEASE}")
    return type(loaded).__name__, vars(loaded)


def labels(path: Path, attributes: dict) -> list:
    """The vocabulary's labels in id order (attribute `ids_to_label`, `_ids_to_label` in older pickles)."""
    for name in ("ids_to_label", "_ids_to_label"):
        if isinstance(attributes.get(name), dict):
            ids = attributes[name]
            if sorted(ids) != list(range(len(ids))):
                raise CheckpointError(f"{path}: ids that do not run 0..{len(ids) - 1}; expected {RELEASE}")
            return [ids[i] for i in range(len(ids))]
    raise CheckpointError(f"{path}: no ids_to_label table; expected {RELEASE}")


@dataclass
class Vocabularies:
    """The release's vocabularies as plain data: labels in id order, and what the code dictionary adds."""

    codes: list[str]
    entities: list[str]  # per code id: default, atc or phewas
    entity_ids: dict[str, int]
    icd_to_phecode: dict[str, str]
    ages: list
    sexes: list[str]
    states: list[str]
    code_ids: dict[str, int] = field(init=False)
    age_ids: dict[float, int] = field(init=False)

    def __post_init__(self) -> None:
        # Looked up once per code of every patient: built once here.
        self.code_ids = {c: i for i, c in enumerate(self.codes)}
        self.age_ids = {float(a): i for i, a in enumerate(self.ages) if not isinstance(a, str)}


def read_vocabularies(directory: Path) -> Vocabularies:
    found: dict[str, tuple[Path, dict]] = {}
    for path in sorted(p for p in directory.iterdir() if p.suffix in PICKLES):
        kind, attributes = read_vocabulary(path)
        if kind in found:
            raise CheckpointError(f"{directory}: two {kind} pickles ({found[kind][0].name}, {path.name}); "
                                  f"expected one of each in {RELEASE}")
        found[kind] = (path, attributes)
    missing = [k for k in VOCABULARIES if k not in found]
    if missing:
        raise CheckpointError(f"{directory}: no {missing[0]} pickle (found {', '.join(sorted(found)) or 'none'}); "
                              f"expected {RELEASE}")
    path, code = found["CodeDict"]
    codes = labels(path, code)
    # Upstream's specials come first (DICT_DEFAULTS): masking writes [MASK]'s id, which the suite shares.
    if len(codes) <= dataset.MASK or codes[dataset.MASK] != "MASK":
        raise CheckpointError(f"{path}: id {dataset.MASK} is not MASK; expected upstream's CodeDict")
    entity_ids = code.get("entity_to_id", code.get("_entity_to_id"))
    if not isinstance(entity_ids, dict) or not isinstance(code.get("entities"), list):
        raise CheckpointError(f"{path}: a CodeDict without entities; expected {RELEASE}")
    return Vocabularies(codes=codes, entities=code["entities"], entity_ids=entity_ids,
                        icd_to_phecode=code.get("icd_phewas_map") or {},
                        ages=labels(*found["AgeDict"]), sexes=labels(*found["SexDict"]),
                        states=labels(*found["StateDict"]))


@dataclass
class Release:
    config: dict
    tensors: dict[str, torch.Tensor]
    vocabularies: Vocabularies

    @property
    def length(self) -> int:
        """The padded length: upstream pads to max_length, and its PLOS head sums over every position."""
        return int(self.config["max_position_embedding"])


def read_release(weights: Path) -> Release:
    """Config, tensors and vocabularies of the release at `weights`, checked against each other."""
    if not weights.is_dir():
        raise CheckpointError(f"{weights}: not a directory; --weights takes {RELEASE}")
    config_path = weights / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: not readable ({e}); expected {RELEASE}") from None
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{config_path}: no {missing[0]!r}; expected upstream's ExMedBertConfig")
    if config["hidden_act"] != "gelu":
        raise CheckpointError(f"{config_path}: hidden_act {config['hidden_act']!r}, the model here computes gelu")
    vocabularies = read_vocabularies(weights)
    sizes = {"code_vocab_size": (vocabularies.codes, "CodeDict"), "age_vocab_size": (vocabularies.ages, "AgeDict"),
             "sex_vocab_size": (vocabularies.sexes, "SexDict"), "region_vocab_size": (vocabularies.states, "StateDict"),
             "number_of_codes": (vocabularies.entity_ids, "CodeDict's entities")}
    for key, (held, name) in sizes.items():
        if len(held) != config[key]:
            raise CheckpointError(f"{weights}: the {name} holds {len(held)}, config.json's {key} is {config[key]}: "
                                  "vocabularies of another model")
    return Release(config, read_tensors(weights, RELEASE, WEIGHTS), vocabularies)


def release_model(release: Release, source: Path) -> PretrainModel:
    """The released pretraining model, loaded strictly, in eval mode."""
    c = release.config
    config = modeling.ExMedBertConfig(
        vocab_size=c["code_vocab_size"], code_types=c["number_of_codes"], sexes=c["sex_vocab_size"],
        states=c["region_vocab_size"], hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
        max_age=c["age_vocab_size"] - 1, max_visits=c["max_position_embedding"] - 1, pad_token_id=c["pad_token_id"],
        layer_norm_eps=c["layer_norm_eps"], visit_table="stored")
    model = PretrainModel(modeling.ExMedBertModel(config), c["code_vocab_size"], plos=bool(c["predict_los"]),
                          plos_over_padding=True)
    load_published(model, fuse_attention(release.tensors, str(source)), UPSTREAM, source, RELEASE)
    return model.eval()


def encode(visits: list[tuple[int, list[str]]], sex: str, state: str, vocabularies: Vocabularies, length: int,
           counts: Counter) -> dict[str, list[int]]:
    """Upstream's model inputs for one patient: `visits` in time order, each (age in whole years, tokens
    `{code}:{vocab}`); `counts` gathers what the release's vocabularies lack."""
    v = vocabularies
    unk = v.code_ids["UNK"]
    kept: list[tuple[int, list[int]]] = []
    for age, tokens in visits:
        ids: list[int] = []
        for token in tokens:
            code, _, kind = token.rpartition(":")
            # The suite's own [UNK] (codes below data.min_count): the code itself is gone.
            kind = kind if code else "unmapped"
            counts[f"{kind}/codes"] += 1
            if kind == "cpt":
                # Upstream's sequences hold diagnoses and drugs only: procedures have no place in them.
                counts["cpt/dropped"] += 1
                continue
            found = _code_id(code, kind, v)
            if found is None:
                counts[f"{kind}/unknown"] += 1
                found = unk
            if found not in ids:  # upstream drops a visit's duplicate codes (drop_duplicates)
                ids.append(found)
        if ids:
            kept.append((age, ids))
    # Upstream's default truncation ("right"): the most recent whole visits that fit.
    total, start = 0, len(kept)
    while start > 0 and total + len(kept[start - 1][1]) <= length:
        start -= 1
        total += len(kept[start][1])
    counts["visits_truncated"] += start
    sex_label = sex if sex in v.sexes else SEX_NAMES.get(sex, "UNK")
    state_label = state if state in v.states else "UNK"
    counts["sex/unknown"] += sex_label == "UNK"
    counts["state/unknown"] += state_label == "UNK"
    sex_id, state_id, unknown_age = v.sexes.index(sex_label), v.states.index(state_label), v.ages.index("UNK")
    out: dict[str, list[int]] = {k: [] for k in ("tokens", "types", "ages", "visits", "sex", "state", "attention")}
    for number, (age, ids) in enumerate(kept[start:], start=1):
        age_id = v.age_ids.get(float(age), unknown_age)
        counts["age/unknown"] += (age_id == unknown_age) * len(ids)
        for code_id in ids:
            out["tokens"].append(code_id)
            out["types"].append(v.entity_ids[v.entities[code_id]])
            out["ages"].append(age_id)
            out["visits"].append(number)
            out["sex"].append(sex_id)
            out["state"].append(state_id)
            out["attention"].append(1)
    pad = v.code_ids["PAD"]
    for key, values in out.items():
        values.extend([pad if key == "tokens" else 0] * (length - len(values)))
    return out


def _code_id(code: str, kind: str, v: Vocabularies) -> int | None:
    if kind == "icd10cm":
        return v.code_ids.get(v.icd_to_phecode.get(code, ""))
    if kind == "atc":
        # Upstream's drugs are ATC level 4 (five characters: rxcui_to_atc4); a longer code takes its level-4 group.
        return v.code_ids.get(code, v.code_ids.get(code[:5]))
    return None


def record_visits(record: dict, vocab: dataset.Vocab) -> list[tuple[int, list[str]]]:
    """A prepared record's visits in order, each (age, code tokens), without [CLS] and [SEP]."""
    visits: dict[int, tuple[int, list[str]]] = {}
    for token, kind, age, visit in zip(record["tokens"], record["types"], record["ages"],
                                       record["visits"], strict=True):
        if kind != dataset.TYPE_IDS["special"]:
            visits.setdefault(visit, (age, []))[1].append(vocab.tokens[token])
    return [visits[k] for k in sorted(visits)]


def encode_records(records: list[dict], vocab: dataset.Vocab, release: Release) -> tuple[list[dict], Counter]:
    """Every prepared record in upstream's encoding, and the counts of what the release lacks."""
    counts: Counter = Counter()
    encoded = [encode(record_visits(r, vocab), vocab.sexes[r["sex"]], vocab.states[r["state"]],
                      release.vocabularies, release.length, counts) for r in records]
    return encoded, counts


def first_code(vocabularies: Vocabularies) -> int:
    """The first id after upstream's specials (PAD UNK CLS SEP MASK NA): masking draws random codes from there."""
    return next(i for i, e in enumerate(vocabularies.entities) if e != "default")


def coverage(counts: Counter) -> dict[str, float]:
    """Share of each vocabulary's codes that the release holds (after mapping)."""
    kinds = sorted(k.split("/")[0] for k in counts if k.endswith("/codes"))
    return {kind: 1.0 - (counts[f"{kind}/unknown"] + counts[f"{kind}/dropped"]) / counts[f"{kind}/codes"]
            if counts[f"{kind}/codes"] else math.nan for kind in kinds}
