"""The command line turns bad input into one line on stderr and exit status 2, with no partial output."""

from pathlib import Path

import pytest
import yaml

from experiments.retclip.synthetic import write_synthetic_odir
from medrepro.suite.cli import main


def run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_unknown_override_key_names_it(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(["retclip", "prepare", "train.lrr=1"], capsys)
    assert code == 2
    assert err.count("\n") == 0 and "train.lrr" in err


def test_wrong_type_in_config_file_names_file_and_key(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: ten\n")
    code, err = run(["retclip", "prepare", "--config", str(bad)], capsys)
    assert code == 2 and "bad.yaml" in err and "train.epochs" in err


def test_missing_odir_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(["retclip", "prepare", "--profile", "full", f"data.odir_root={tmp_path / 'nope'}"], capsys)
    assert code == 2 and "nope" in err
    assert not (tmp_path / "data" / "retclip" / "prepared" / "patients.jsonl").exists()


def test_missing_image_fails_before_writing_anything(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_synthetic_odir(tmp_path / "odir", 12, seed=0)
    victim = sorted((root / "Training Images").glob("*_right.jpg"))[3]
    victim.unlink()
    code, err = run(["retclip", "prepare", "--profile", "full", f"data.odir_root={root}"], capsys)
    assert code == 2 and victim.name in err
    assert not (tmp_path / "data" / "retclip" / "prepared").exists()


def test_build_lmdb_before_prepare(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(["retclip", "build-lmdb"], capsys)
    assert code == 2 and "data/retclip/prepared (paths.prepared) not found: run `medrepro retclip prepare` first" in err


def test_unknown_variant_lists_the_choices(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["retclip", "train", "--variant", "gpt"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "gpt" in err and "pubmedbert" in err


def test_config_command_prints_the_resolved_config_and_runs_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["cross_encoder", "config", "train.lr=0.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.5 and printed["runtime"] == {"threads": 1, "cpu_kernels": "portable"}
    assert list(tmp_path.iterdir()) == []


def test_unknown_experiment_and_help(capsys):
    assert main(["nope"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "retclip" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["retclip", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("prepare", "build-lmdb", "train", "evaluate", "smoke", "bench", "config"):
        assert command in out


def test_evaluate_weights_missing_file_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(["biomedica_clip", "evaluate", "--weights", str(tmp_path / "bmca-clip")], capsys)
    assert code == 2 and err.count("\n") == 0
    assert "bmca-clip (--weights) not found" in err and "experiments/biomedica_clip/README.md" in err
    assert not (tmp_path / "results").exists()


def test_weights_name_a_path_or_a_hub_id_already_in_the_local_cache(tmp_path, monkeypatch):
    """A hub id that is not a path here is looked up in the Hugging Face cache (its own layout: refs/main
    names the snapshot), offline; one that is not there is the one-line error, and a path is taken as is."""
    from huggingface_hub import constants

    from medrepro.errors import DataError
    from medrepro.suite.commands import released_source

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    snapshot = cache / "models--cambridgeltl--SapBERT-tiny" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    assert released_source(Path("cambridgeltl/SapBERT-tiny"), "cross_encoder") == snapshot
    with pytest.raises(DataError, match=r"cambridgeltl/other \(--weights\) not found: .* or a hub id in the local "
                                        r"Hugging Face cache; experiments/cross_encoder/README.md"):
        released_source(Path("cambridgeltl/other"), "cross_encoder")
    (tmp_path / "cambridgeltl" / "SapBERT-tiny").mkdir(parents=True)  # a local directory of that name wins
    assert released_source(Path("cambridgeltl/SapBERT-tiny"), "cross_encoder") == Path("cambridgeltl/SapBERT-tiny")


def test_evaluate_needs_a_variant_or_weights_and_weights_only_where_an_experiment_loads_them(capsys, tmp_path,
                                                                                            monkeypatch):
    import dataclasses

    from medrepro.suite import registry
    from medrepro.suite.commands import build_parser

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as usage:
        main(["retclip", "evaluate"])
    assert usage.value.code == 2 and "--variant" in capsys.readouterr().err
    # Every experiment of the suite loads its authors' released weights.
    for experiment in registry.all_experiments():
        assert experiment.evaluate_published, experiment.name
        args = build_parser(experiment).parse_args(["evaluate", "--weights", "release"])
        assert str(args.weights) == "release"
    # An experiment declaring no loader has no such option.
    without = dataclasses.replace(registry.get("retclip"), evaluate_published="")
    with pytest.raises(SystemExit) as usage:
        build_parser(without).parse_args(["evaluate", "--variant", "pubmedbert", "--weights", "x"])
    assert usage.value.code == 2 and "unrecognized arguments: --weights" in capsys.readouterr().err
