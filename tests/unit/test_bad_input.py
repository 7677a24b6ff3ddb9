"""User mistakes end as one line and exit 2, quickly, with nothing written; malformed `link` input too,
whatever it holds (property test)."""

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.cross_encoder import model as cross
from experiments.cross_encoder.link import read_spans
from medrepro.errors import DataError
from medrepro.suite.cli import main


@pytest.mark.parametrize("record", [
    {"id": "d", "text": "abc", "spans": 5},
    {"id": "d", "text": "abc", "spans": [[True, 2]]},
    {"id": "d", "text": "abc", "spans": [[0, 9]]},
    {"id": "d", "text": 7, "spans": [[0, 1]]},
])
def test_malformed_link_spans_are_one_line(tmp_path, record):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"in\.jsonl:1") as info:
        read_spans(path, 4)
    assert "\n" not in str(info.value)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 50) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
RECORDS = st.fixed_dictionaries({}, optional={"id": JSON, "text": st.text(max_size=20) | JSON, "spans": JSON})


@settings(max_examples=300, deadline=None)
@given(st.lists(RECORDS | JSON, min_size=1, max_size=3))
def test_no_link_input_ends_in_a_traceback(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("link") / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    try:
        spans = read_spans(path, 4)
    except DataError as e:
        assert "\n" not in str(e)
    else:
        assert all(0 <= s.start < s.end and s.text for s in spans)


def test_link_or_evaluate_before_training_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"model directory .* not found: train first"):
        cross.load(tmp_path / "runs" / "cross_encoder" / "sapbert" / "model")


def test_evaluate_of_an_unfinished_run_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "retclip" / "pubmedbert" / "checkpoints").mkdir(parents=True)
    assert main(["retclip", "evaluate", "--variant", "pubmedbert"]) == 2
    err = capsys.readouterr().err
    assert "holds no finished run" in err and "--checkpoint PATH" in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


def test_a_config_mistake_fails_before_any_heavy_import(tmp_path):
    """Quick because a cold start imports yaml and the configs only (torch alone takes seconds): checked by
    what was imported, not by a clock that a loaded machine slows down."""
    script = ("import json, sys; from medrepro.suite.cli import main\n"
              "code = main(['retclip', 'train', '--variant', 'pubmedbert', 'train.lr=-1'])\n"
              "top = {m.partition('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)\n"
              "print(json.dumps([code, sorted(m for m in top if not m.startswith('_'))]))")
    # The timeout only turns a hang into a failure; the command takes well under a second.
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    code, imported = json.loads(proc.stdout)
    assert code == 2 and "lr must be positive" in proc.stderr
    # cython_runtime: what PyYAML's C loader registers.
    assert set(imported) <= {"medrepro", "experiments", "yaml", "cython_runtime"}, imported


def test_prepared_tables_from_different_prepare_runs_are_refused(tmp_path):
    from experiments.cross_encoder.readers import read_concepts, read_mentions
    from medrepro import atomic, repro

    prepared = tmp_path / "prepared"
    atomic.write_text(prepared / "concepts.jsonl", '{"cui": "C1", "preferred": "a", "names": ["a"], "types": []}\n')
    atomic.write_text(prepared / "mentions.jsonl", "")
    atomic.write_json(prepared / "summary.json", {"files": {n: repro.sha256_file(prepared / n)
                                                            for n in ("concepts.jsonl", "mentions.jsonl")}})
    assert [c.cui for c in read_concepts(prepared)] == ["C1"] and read_mentions(prepared) == []
    # A prepare killed after writing one table: the other no longer matches.
    atomic.write_text(prepared / "mentions.jsonl", '{"split": "train"}\n')
    with pytest.raises(DataError, match=r"mentions\.jsonl does not match the checksum in .*summary\.json"):
        read_mentions(prepared)
