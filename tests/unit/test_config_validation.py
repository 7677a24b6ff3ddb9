"""Config values are checked for range and meaning, and a bad override is blamed on the override.
The property test: no override, however odd, ends in anything but a config error or a config."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.retclip.config import RetClipConfig
from medrepro.config import load_config
from medrepro.errors import ConfigError

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "retclip" / "configs" / "smoke.yaml"


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=-1", "lr must be positive, got -1.0"),
    ("train.epochs=.nan", "train.epochs: expected a finite number, got nan"),
    ("train.log_every_steps=0", "log_every_steps must be positive, got 0"),
    ("train.weight_decay=-0.1", "weight_decay must be 0 or more"),
    ("train.betas=[0.9, 1.5]", "betas must lie in [0, 1)"),
    ("train.batch_size=10", "batch_size 10 must be a multiple of grad_accum"),
    ("runtime.threads=-2", "runtime.threads must be 0 (the default) or positive"),
])
def test_bad_values_are_one_line_blaming_the_override(override, message):
    extra = ["train.grad_accum=4"] if "batch_size" in override else []
    with pytest.raises(ConfigError) as info:
        load_config(RetClipConfig, SMOKE, [*extra, override])
    text = str(info.value)
    assert message in text and "\n" not in text
    assert text.startswith(f"override '{override}'"), f"blamed on the file instead: {text}"


def test_a_bad_value_in_the_file_is_blamed_on_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: train: lr must be positive"):
        load_config(RetClipConfig, bad)


KEYS = ["seed", "train.lr", "train.epochs", "train.batch_size", "train.betas", "train.schedule",
        "train.tracking.mlflow", "encoders.pubmedbert.path", "encoders.x.tiny.seed", "model.vision_cfg",
        "data.split", "runtime.threads", "runtime.cpu_kernels", "index.kind", "mining.candidates", "nope.key",
        "train", "eval.alpha", ""]
VALUES = st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6).map(str), st.floats().map(repr),
                   st.sampled_from(["[1, 2]", "{a: 1}", "null", "true", ".nan", "-.inf", "[", "{]"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4), st.sampled_from([RetClipConfig,
                                                                                        CrossEncoderConfig]))
def test_no_override_ends_in_a_traceback(pairs, cls):
    path = SMOKE if cls is RetClipConfig else SMOKE.parents[2] / "cross_encoder" / "configs" / "smoke.yaml"
    try:
        load_config(cls, path, [f"{k}={v}" for k, v in pairs])
    except ConfigError as e:
        assert "\n" not in str(e)
