"""Commands are quiet by default: the libraries' chatter (transformers' load reports and progress bars,
open_clip_train's setup log and model printout) stays off the console, our own progress and summaries
stay on, and `--verbose` brings the rest back."""

import argparse
import subprocess
import sys
import textwrap

import pytest

from experiments.biomedica_clip.train import quiet_console
from medrepro.suite import registry
from medrepro.suite.commands import build_parser


def test_every_command_of_every_experiment_takes_verbose():
    for experiment in registry.all_experiments():
        parser = build_parser(experiment)
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        for name, command in commands.items():
            assert "--verbose" in command._option_string_actions, f"medrepro {experiment.name} {name}"


# A model built from a saved BERT with a fresh classification head: transformers reports the head's
# keys as missing from the checkpoint, draws its bars, and says nothing else.
LOAD = textwrap.dedent("""
    import sys
    from medrepro import runtime
    runtime.set_verbose(sys.argv[1] == "verbose")
    from transformers import BertForSequenceClassification
    from medrepro.config_sections import TinyBertConfig
    from medrepro.tiny import build_tiny_bert
    path = build_tiny_bert(sys.argv[2], ["a tiny corpus of words"], TinyBertConfig())
    BertForSequenceClassification.from_pretrained(str(path), num_labels=1)
    print("child verbose" if runtime.verbose() else "child quiet")
""")


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_transformers_reports_and_bars_only_when_verbose(mode, tmp_path):
    proc = subprocess.run([sys.executable, "-c", LOAD, mode, str(tmp_path / "bert")], capture_output=True, text=True,
                          check=True)
    shown = {"LOAD REPORT" in proc.stderr, "Loading weights" in proc.stderr, "Writing model shards" in proc.stderr}
    assert shown == {mode == "verbose"}, proc.stderr
    # A process the command starts inherits the choice.
    assert proc.stdout.strip() == f"child {mode}"


OPEN_CLIP_CONSOLE = """\
2026-12-04,14:53:51 | INFO | Running with a single process. Device cpu.
2026-12-04,14:53:51 | INFO | Model:
2026-12-04,14:53:51 | INFO | CLIP(
  (visual): VisionTransformer(
    (conv1): Conv2d(3, 64, kernel_size=(8, 8), stride=(8, 8), bias=False)
)
2026-12-04,14:53:51 | INFO | Params:
2026-12-04,14:53:51 | INFO |   accum_freq: 1
2026-12-04,14:53:51 | INFO | Start epoch 0
2026-12-04,14:53:51 | INFO | Train Epoch: 0 [ 64/768 (8%)] Data (t): 0.166 Batch (t): 0.309, 206.872/s LR: 0.000100
2026-12-04,14:53:53 | INFO | Eval Epoch: 1 [64 / 256]\tClip Loss: 3.702641\t
2026-12-04,14:53:53 | WARNING | Ignoring the rest of the shard
/site-packages/torch/utils/data.py:12: UserWarning: a warning of Python's
  warnings.warn(message)
I1204 14:54:07.427000 14065 torch/_dynamo/eval_frame.py:837] TorchDynamo attempted to trace the following frames: [
I1204 14:54:07.427000 14065 torch/_dynamo/eval_frame.py:837] ]
W1204 14:54:07.431000 14065 torch/distributed/run.py:1] a warning of torch's
Traceback (most recent call last):
  File "main.py", line 1, in <module>
RuntimeError: stopped
"""


def test_open_clip_train_console_keeps_progress_warnings_and_errors():
    kept = "".join(quiet_console(OPEN_CLIP_CONSOLE.splitlines(keepends=True)))
    assert kept == """\
2026-12-04,14:53:51 | INFO | Train Epoch: 0 [ 64/768 (8%)] Data (t): 0.166 Batch (t): 0.309, 206.872/s LR: 0.000100
2026-12-04,14:53:53 | INFO | Eval Epoch: 1 [64 / 256]\tClip Loss: 3.702641\t
2026-12-04,14:53:53 | WARNING | Ignoring the rest of the shard
/site-packages/torch/utils/data.py:12: UserWarning: a warning of Python's
  warnings.warn(message)
W1204 14:54:07.431000 14065 torch/distributed/run.py:1] a warning of torch's
Traceback (most recent call last):
  File "main.py", line 1, in <module>
RuntimeError: stopped
"""
