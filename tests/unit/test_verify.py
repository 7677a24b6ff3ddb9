"""The comparison `medrepro verify` makes between committed and reproduced result files."""

import json

from medrepro.suite.verify import differences, table


def test_a_changed_metric_is_listed_with_both_values(tmp_path):
    committed, reproduced = tmp_path / "a", tmp_path / "b"
    for root, acc in ((committed, 0.85), (reproduced, 0.8411)):
        (root / "results" / "x" / "v").mkdir(parents=True)
        (root / "results" / "x" / "v" / "metrics.json").write_text(json.dumps({"acc": acc, "auc": 0.9}))
        (root / "results" / "RESULTS.md").write_text("same\n")
    files = ["results/RESULTS.md", "results/x/v/metrics.json", "results/x/v/plots/missing.png"]
    (committed / "results" / "x" / "v" / "plots").mkdir()
    (committed / "results" / "x" / "v" / "plots" / "missing.png").write_bytes(b"png")
    rows = differences(committed, reproduced, files)
    assert rows == [("results/x/v/metrics.json", "acc", "0.85", "0.8411"),
                    ("results/x/v/plots/missing.png", "(file)", "present", "missing")]
    text = table(rows)
    assert text.splitlines()[0].split() == ["file", "metric", "committed", "reproduced"]
    assert "0.8411" in text


def test_identical_files_are_no_difference(tmp_path):
    for root in (tmp_path / "a", tmp_path / "b"):
        (root / "results").mkdir(parents=True)
        (root / "results" / "m.json").write_text('{"acc": 1}')
    assert differences(tmp_path / "a", tmp_path / "b", ["results/m.json"]) == []


def test_a_long_table_shows_a_few_rows_per_file_and_counts_the_rest():
    rows = [("a.json", f"m{i}", "1", "2") for i in range(25)] + [("b.json", "x", "1", "2")]
    lines = table(rows, per_file=10).splitlines()
    assert len(lines) == 2 + 10 + 1 + 1
    assert "(and 15 more)" in lines[12] and lines[-1].startswith("b.json")
