"""`medrepro report`: the README's results block is generated from the committed results, and writing it
touches nothing outside its markers."""

from pathlib import Path

import pytest

from medrepro.errors import MedreproError
from medrepro.suite import cli, registry, report

ROOT = registry.repo_root()
BEGIN, END = report.README_BEGIN, report.README_END


def test_the_readme_results_block_is_what_report_writes_from_the_committed_results():
    readme = (ROOT / "README.md").read_bytes().decode("utf-8")
    _, block = report.render(ROOT / "results")
    assert report.replace_block(readme, block, Path("README.md")) == readme, \
        "README.md's results block is stale or edited by hand: run `medrepro report --readme README.md`"


def test_the_block_replaces_only_what_lies_between_the_markers():
    before = f"# Title \r\n\ntext <!-- other -->\n{BEGIN}\n"
    after = f"{END}\n\ntrailing spaces   \n"
    text = before + "old table\nold line\n" + after
    assert report.replace_block(text, "new table\n", Path("R.md")) == before + "new table\n" + after
    # Whatever was between the markers (or nothing) gives the same result: nothing of it survives.
    assert report.replace_block(f"{before[:-1]}{after}", "new table\n", Path("R.md")) == before + "new table\n" + after


@pytest.mark.parametrize("text", ["no markers\n", f"{BEGIN}\nonly the first\n", f"only the second\n{END}\n",
                                  f"{END}\nreversed\n{BEGIN}\n", f"{BEGIN}\n{BEGIN}\ntwice\n{END}\n"])
def test_a_readme_without_one_ordered_pair_of_markers_is_refused(text):
    with pytest.raises(MedreproError, match=r"R\.md needs one `<!-- results:begin -->`"):
        report.replace_block(text, "table\n", Path("R.md"))


def test_report_writes_the_readme_block_and_keeps_the_rest(tmp_path):
    (tmp_path / "results").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nstale\n{END}\noutro\n")
    assert cli.main(["report", "--results", str(tmp_path / "results"), "--readme", str(readme)]) == 0
    results, block = report.render(tmp_path / "results")
    assert readme.read_text() == f"intro\n{BEGIN}\n{block}{END}\noutro\n"
    assert (tmp_path / "results" / "RESULTS.md").read_text() == results


def test_a_readme_without_markers_is_one_error_line_and_nothing_is_written(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("a README whose markers were deleted\n")
    assert cli.main(["report", "--results", str(tmp_path / "results"), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "README.md needs one" in err
    assert readme.read_text() == "a README whose markers were deleted\n"
    assert not (tmp_path / "results" / "RESULTS.md").exists()


def test_the_readme_block_is_never_built_from_a_subset_of_the_experiments(tmp_path):
    # The block lists every experiment; a smoke run's report of one experiment must not shrink it.
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--results", str(tmp_path), "--experiments", "retclip", "--readme", str(tmp_path / "R.md")])
    assert exit_info.value.code == 2
