"""Typed YAML configs: loading, overrides, validation errors and the saved copy of a run's config."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from experiments.retclip.config import EncoderConfig, RetClipConfig
from medrepro.config import load_config, save_config
from medrepro.config_sections import TinyBertConfig
from medrepro.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "retclip" / "configs"


@dataclass
class Inner:
    rate: float = 0.1
    depth: int = 2
    flag: bool = False


@dataclass
class Group:
    label: str
    size: int = 1


@dataclass
class Top:
    name: str
    inner: Inner = field(default_factory=Inner)
    mode: Literal["a", "b"] = "a"
    pair: tuple[float, float] = (0.5, 0.5)
    tags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    maybe: Inner | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.inner.depth < 0:
            raise ValueError("inner.depth must not be negative")


def write(tmp_path: Path, data: Any, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def load_error(path: Path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(Top, path, overrides)
    return str(info.value)


# ------------------------------------------------------------------------------------------ loading


def test_nested_dataclasses_load_with_types(tmp_path):
    path = write(tmp_path, {"name": "run", "inner": {"rate": 0.5, "depth": 3, "flag": True}, "mode": "b",
                            "pair": [1, 2], "tags": ["x", "y"], "extra": {"k": [1, 2]}, "counts": {"a": 1},
                            "groups": {"g": {"label": "G", "size": 4}}, "maybe": {"depth": 7}, "limit": 5})
    cfg = load_config(Top, path)
    assert cfg == Top(name="run", inner=Inner(0.5, 3, True), mode="b", pair=(1.0, 2.0), tags=["x", "y"],
                      extra={"k": [1, 2]}, counts={"a": 1}, groups={"g": Group("G", 4)}, maybe=Inner(depth=7),
                      limit=5)
    assert isinstance(cfg.pair, tuple) and all(type(v) is float for v in cfg.pair)
    assert type(cfg.inner) is Inner and type(cfg.groups["g"]) is Group


def test_defaults_fill_missing_optional_keys(tmp_path):
    cfg = load_config(Top, write(tmp_path, {"name": "n", "inner": {"depth": 4}}))
    assert cfg.inner == Inner(rate=0.1, depth=4, flag=False)
    assert cfg.tags == [] and cfg.maybe is None and cfg.limit is None and cfg.pair == (0.5, 0.5)


def test_int_is_accepted_for_float_and_converted(tmp_path):
    cfg = load_config(Top, write(tmp_path, {"name": "n", "inner": {"rate": 1}}))
    assert cfg.inner.rate == 1.0 and type(cfg.inner.rate) is float


def test_optional_fields_accept_null_and_value(tmp_path):
    assert load_config(Top, write(tmp_path, {"name": "n", "limit": None, "maybe": None})).limit is None
    cfg = load_config(Top, write(tmp_path, {"name": "n", "limit": 3, "maybe": {"flag": True}}))
    assert cfg.limit == 3 and cfg.maybe == Inner(flag=True)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, {"inner": {"depth": 1}})
    message = load_error(path)
    assert str(path) in message and "missing required key 'name'" in message


def test_missing_required_key_in_nested_dataclass(tmp_path):
    path = write(tmp_path, {"name": "n", "groups": {"g": {"size": 2}}})
    message = load_error(path)
    assert str(path) in message and "groups.g.label" in message


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file_reports_missing_required_key(tmp_path, text):
    assert "'name'" in load_error(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Top, tmp_path / "nope.yaml")


def test_invalid_yaml_is_one_line_naming_the_file(tmp_path):
    path = write(tmp_path, "name: [unclosed\ninner: {\n")
    message = load_error(path)
    assert str(path) in message and "\n" not in message


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    assert str(path) in load_error(path)


# ------------------------------------------------------------------------------------ unknown keys


def test_unknown_top_level_key_names_file_and_key(tmp_path):
    path = write(tmp_path, {"name": "n", "nmae": "typo"})
    message = load_error(path)
    assert str(path) in message and "'nmae'" in message


def test_unknown_nested_key_names_file_and_dotted_key(tmp_path):
    path = write(tmp_path, {"name": "n", "inner": {"rat": 0.3}})
    message = load_error(path)
    assert str(path) in message and "'inner.rat'" in message


def test_unknown_key_inside_optional_dataclass(tmp_path):
    path = write(tmp_path, {"name": "n", "maybe": {"bogus": 1}})
    message = load_error(path)
    assert str(path) in message and "maybe.bogus" in message


def test_unknown_key_inside_dict_of_dataclasses(tmp_path):
    path = write(tmp_path, {"name": "n", "groups": {"g": {"label": "x", "sise": 2}}})
    message = load_error(path)
    assert str(path) in message and "groups.g.sise" in message


# -------------------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(("data", "key"), [
    ({"inner": {"depth": "3"}}, "inner.depth"),        # string for int
    ({"inner": {"depth": True}}, "inner.depth"),       # bool for int (bool is an int subclass)
    ({"inner": {"depth": 2.5}}, "inner.depth"),        # float for int
    ({"inner": {"rate": True}}, "inner.rate"),         # bool for float
    ({"inner": {"rate": "fast"}}, "inner.rate"),       # string for float
    ({"inner": {"flag": 1}}, "inner.flag"),            # int for bool
    ({"inner": {"flag": "yes please"}}, "inner.flag"),
    ({"inner": 3}, "inner"),                           # scalar for a dataclass
    ({"tags": "x"}, "tags"),                           # scalar for a list
    ({"tags": [1]}, "tags[0]"),
    ({"counts": {"a": "x"}}, "counts.a"),              # dict value type
    ({"counts": [1]}, "counts"),                       # list for a dict
    ({"limit": "x"}, "limit"),                         # X | None with a wrong X
    ({"pair": [1, "x"]}, "pair[1]"),
])
def test_wrong_type_names_file_and_key(tmp_path, data, key):
    path = write(tmp_path, {"name": "n", **data})
    message = load_error(path)
    assert str(path) in message and key in message


def test_name_must_be_a_string(tmp_path):
    path = write(tmp_path, {"name": 12})
    assert "name" in load_error(path)


def test_literal_violation(tmp_path):
    path = write(tmp_path, {"name": "n", "mode": "c"})
    message = load_error(path)
    assert str(path) in message and "mode" in message and "'c'" in message


@pytest.mark.parametrize("pair", [[1.0], [1.0, 2.0, 3.0]])
def test_tuple_length_mismatch(tmp_path, pair):
    path = write(tmp_path, {"name": "n", "pair": pair})
    message = load_error(path)
    assert str(path) in message and "pair" in message and "expected 2 items" in message


def test_post_init_value_error_becomes_config_error(tmp_path):
    path = write(tmp_path, {"name": "n", "inner": {"depth": -1}})
    message = load_error(path)
    assert str(path) in message and "must not be negative" in message


# --------------------------------------------------------------------------------------- overrides


def test_overrides_parse_yaml_scalars_and_lists(tmp_path):
    path = write(tmp_path, {"name": "n", "inner": {"depth": 1}})
    cfg = load_config(Top, path, ["inner.depth=5", "inner.rate=0.25", "inner.flag=true", "tags=[a, b]",
                                  "pair=[0.1, 0.2]", "mode=b", "name=other", "limit=9"])
    assert cfg.inner == Inner(rate=0.25, depth=5, flag=True)
    assert type(cfg.inner.depth) is int and cfg.inner.flag is True
    assert cfg.tags == ["a", "b"] and cfg.pair == (0.1, 0.2) and cfg.mode == "b"
    assert cfg.name == "other" and cfg.limit == 9


@pytest.mark.parametrize(("text", "value"), [("1e-4", 1e-4), ("3.0e-5", 3e-5), ("2E-3", 2e-3), ("1e4", 1e4)])
def test_override_float_in_exponent_notation(tmp_path, text, value):
    """The override docstring promises `1e-4`; PyYAML's YAML 1.1 resolver reads `1e-4` as a string."""
    cfg = load_config(Top, write(tmp_path, {"name": "n"}), [f"inner.rate={text}"])
    assert cfg.inner.rate == pytest.approx(value)


def test_exponent_float_in_file(tmp_path):
    cfg = load_config(Top, write(tmp_path, "name: n\ninner:\n  rate: 1e-4\n"))
    assert cfg.inner.rate == pytest.approx(1e-4) and type(cfg.inner.rate) is float


def test_override_null_for_optional(tmp_path):
    cfg = load_config(Top, write(tmp_path, {"name": "n", "limit": 3}), ["limit=null"])
    assert cfg.limit is None


def test_override_creates_a_nested_dataclass_absent_from_the_file(tmp_path):
    cfg = load_config(Top, write(tmp_path, {"name": "n"}), ["inner.depth=7", "maybe.rate=0.5"])
    assert cfg.inner == Inner(depth=7) and cfg.maybe == Inner(rate=0.5)


def test_override_in_dict_field_keeps_sibling_keys(tmp_path):
    path = write(tmp_path, {"name": "n", "extra": {"a": 1, "b": {"c": 2}}})
    cfg = load_config(Top, path, ["extra.z=[1, 2]", "counts.k=4"])
    assert cfg.extra == {"a": 1, "b": {"c": 2}, "z": [1, 2]}
    assert cfg.counts == {"k": 4}


def test_override_two_levels_into_a_dict_of_any(tmp_path):
    """`extra.b.d=3` with `extra: dict[str, Any]` walks into an `Any` value; that must not crash."""
    path = write(tmp_path, {"name": "n", "extra": {"a": 1, "b": {"c": 2}}})
    cfg = load_config(Top, path, ["extra.b.d=3", "extra.new.deep=x"])
    assert cfg.extra == {"a": 1, "b": {"c": 2, "d": 3}, "new": {"deep": "x"}}


def test_override_inside_dict_of_dataclasses(tmp_path):
    """A key under a `dict[str, Dataclass]` field (e.g. `encoders.pubmedbert.path=...`) names an entry of
    the dict, not a field of the dataclass; it must not be rejected as unknown."""
    path = write(tmp_path, {"name": "n", "groups": {"g": {"label": "G"}}})
    cfg = load_config(Top, path, ["groups.g.size=3", "groups.h.label=H"])
    assert cfg.groups == {"g": Group("G", 3), "h": Group("H", 1)}


def test_override_wrong_type_is_still_checked(tmp_path):
    path = write(tmp_path, {"name": "n"})
    message = load_error(path, ["inner.depth=ten"])
    # The value came from the command line, so the message blames the override, not the file.
    assert message.startswith("override 'inner.depth=ten'") and "inner.depth" in message and "'ten'" in message


@pytest.mark.parametrize(("item", "key"), [("nmae=x", "nmae"), ("inner.dpeth=3", "inner.dpeth"),
                                           ("maybe.bogus=1", "maybe.bogus")])
def test_unknown_override_key_is_named(tmp_path, item, key):
    message = load_error(write(tmp_path, {"name": "n"}), [item])
    assert f"'{key}'" in message and item in message


def test_override_below_a_scalar_is_a_config_error(tmp_path):
    assert "inner.depth" in load_error(write(tmp_path, {"name": "n"}), ["inner.depth.x=1"])


@pytest.mark.parametrize("item", ["inner.depth", "=3"])
def test_malformed_override(tmp_path, item):
    assert "key.sub=value" in load_error(write(tmp_path, {"name": "n"}), [item])


def test_later_override_wins_and_file_value_is_replaced(tmp_path):
    cfg = load_config(Top, write(tmp_path, {"name": "n", "inner": {"depth": 1}}), ["inner.depth=2", "inner.depth=3"])
    assert cfg.inner.depth == 3


# ------------------------------------------------------------------------------------ save_config


def test_save_config_round_trip(tmp_path):
    cfg = load_config(Top, write(tmp_path, {"name": "n", "pair": [1, 2], "groups": {"g": {"label": "G"}},
                                            "maybe": {"flag": True}, "extra": {"x": {"y": [1]}}}),
                      ["inner.rate=0.3"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert isinstance(yaml.safe_load(out.read_text()), dict)  # plain YAML, no python tags
    assert load_config(Top, out) == cfg
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left


# -------------------------------------------------------------------------------- retclip profiles


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_retclip_profiles_load_and_round_trip(tmp_path, profile):
    cfg = load_config(RetClipConfig, CONFIGS / f"{profile}.yaml")
    assert set(cfg.encoders) == {"pubmedbert", "bert_base", "biobert"}
    assert all(type(enc) is EncoderConfig for enc in cfg.encoders.values())
    assert isinstance(cfg.data.split, tuple) and sum(cfg.data.split) == pytest.approx(1.0)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(RetClipConfig, tmp_path / "config.yaml") == cfg


def test_retclip_smoke_values():
    cfg = load_config(RetClipConfig, CONFIGS / "smoke.yaml")
    assert cfg.data.source == "synthetic" and cfg.data.split == (0.7, 0.15, 0.15)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.warmup_epochs == 1.0 and cfg.train.warmup_steps == 0
    assert cfg.encoders["biobert"].tiny == TinyBertConfig(lowercase=False, vocab_size=72, seed=3)
    assert cfg.model.vision_cfg["image_size"] == 32 and cfg.model.embed_dim == 64


def test_retclip_full_values():
    cfg = load_config(RetClipConfig, CONFIGS / "full.yaml")
    assert cfg.data.source == "odir" and cfg.train.precision == "fp16"
    assert cfg.train.lr == pytest.approx(3e-5) and cfg.train.warmup_steps == 50
    assert all(enc.tiny is None for enc in cfg.encoders.values())


def test_retclip_override_exponent_learning_rate():
    """`train.lr=1e-4` on the command line must give the float 1e-4."""
    cfg = load_config(RetClipConfig, CONFIGS / "smoke.yaml", ["train.lr=1e-4"])
    assert cfg.train.lr == pytest.approx(1e-4)


def test_retclip_override_vision_cfg_keeps_other_keys():
    cfg = load_config(RetClipConfig, CONFIGS / "smoke.yaml", ["model.vision_cfg.layers=3", "train.epochs=2"])
    assert cfg.model.vision_cfg == {"image_size": 32, "patch_size": 8, "layers": 3, "width": 64,
                                    "head_width": 32, "mlp_ratio": 2.0}
    assert cfg.train.epochs == 2.0


def test_retclip_override_encoder_entry():
    """The README-style offline override `encoders.<name>.path=<dir>` must reach that encoder."""
    cfg = load_config(RetClipConfig, CONFIGS / "full.yaml", ["encoders.pubmedbert.path=/models/pubmedbert"])
    assert cfg.encoders["pubmedbert"].path == "/models/pubmedbert"
    assert cfg.encoders["bert_base"].path == "bert-base-uncased"


def test_retclip_unknown_override_key():
    with pytest.raises(ConfigError, match=r"'train\.lrr'"):
        load_config(RetClipConfig, CONFIGS / "smoke.yaml", ["train.lrr=0.1"])


def test_retclip_both_warmups_rejected(tmp_path):
    text = (CONFIGS / "smoke.yaml").read_text()
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(RetClipConfig, path, ["train.warmup_steps=10"])
    # The override made the clash, so it is named; the file's warmup_epochs is named in the text.
    assert str(info.value).startswith("override 'train.warmup_steps=10'") and "warmup_epochs" in str(info.value)


def test_retclip_wrong_literal_in_nested_section(tmp_path):
    path = write(tmp_path, {"data": {"source": "kaggle"}})
    with pytest.raises(ConfigError) as info:
        load_config(RetClipConfig, path)
    assert str(path) in str(info.value) and "data.source" in str(info.value)
