"""dvc.yaml is generated from the declarations, and each stage's code dependencies follow its imports."""

from medrepro.suite import pipeline, registry

ROOT = registry.repo_root()


def test_dvc_yaml_is_current():
    assert (ROOT / "dvc.yaml").read_text() == pipeline.generate(ROOT), "dvc.yaml is stale: run `medrepro pipeline`"


def test_code_dependencies_follow_the_imports_of_each_stage():
    train = pipeline.experiment_modules(["experiments.retclip.train"], "retclip", ROOT)
    assert "experiments/retclip/model.py" in train and "experiments/retclip/zeroshot.py" in train
    # Evaluation code is not imported by training: editing it must not re-run training.
    assert "experiments/retclip/evaluate.py" not in train
    evaluate = pipeline.experiment_modules(["experiments.retclip.evaluate"], "retclip", ROOT)
    assert {"experiments/retclip/evaluate.py", "experiments/retclip/seedstats.py"} <= set(evaluate)
    # ...and training code is not imported by evaluation: editing it re-runs evaluation through the run only.
    assert "experiments/retclip/train.py" not in evaluate
    # Imports inside functions count too.
    mining = pipeline.experiment_modules(["experiments.cross_encoder.mining"], "cross_encoder", ROOT)
    assert "experiments/cross_encoder/retrieval.py" in mining


def test_every_stage_depends_on_the_library_its_config_and_data_files():
    stages = pipeline.experiment_stages(registry.get("retclip"), ROOT)
    for name in ("retclip_prepare", "retclip_build_lmdb"):
        deps = stages[name]["deps"]
        assert {"shared/medrepro", "experiments/retclip/configs/${profile}.yaml",
                "experiments/retclip/prompts.yaml", "experiments/retclip/experiment.py"} <= set(deps)
    train = stages["retclip_train"]["do"]
    assert {"data/retclip/prepared", "data/retclip/lmdb"} <= set(train["deps"])
    assert train["outs"] == ["runs/retclip/${item}"]
    evaluate = stages["retclip_evaluate"]["do"]
    assert evaluate["metrics"] == [{"results/retclip/${item}/metrics.json": {"cache": False}}]


def test_smoke_runs_the_stages_in_pipeline_order():
    commands = pipeline.pipeline_commands(registry.get("cross_encoder"), ["sapbert"])
    assert commands == [["prepare"], ["index"], ["mine"], ["train", "--variant", "sapbert"],
                        ["evaluate", "--variant", "sapbert"]]


def test_dvc_lock_holds_only_stages_the_pipeline_defines():
    """DVC keeps the lock entries of removed or renamed stages; stale ones would hide from verify."""
    import yaml

    defined = set()
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        defined |= {f"{name}@{item}" for item in stage["foreach"]} if "foreach" in stage else {name}
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert locked <= defined, f"stale entries in dvc.lock: {sorted(locked - defined)}"


def test_the_report_depends_on_what_a_comparison_reads():
    deps = pipeline.generate(ROOT).split("  report:")[1]
    for variant in ("pubmedbert", "bert_base", "biobert"):
        assert f"results/retclip/{variant}/predictions.json" in deps
    assert "experiments/retclip/compare.py" in deps and "experiments/retclip/seedstats.py" in deps


def test_an_experiment_whose_evaluation_reads_every_run_trains_all_variants_first():
    exmed = registry.get("exmed_bert")
    assert exmed.evaluate_reads_all_runs
    commands = pipeline.pipeline_commands(exmed, list(exmed.variants))
    trains = [c for c in commands if c[0] == "train"]
    evaluates = [c for c in commands if c[0] == "evaluate"]
    assert len(trains) == len(evaluates) == 4
    assert commands.index(evaluates[0]) > commands.index(trains[-1])
    evaluate = pipeline.experiment_stages(exmed, ROOT)["exmed_bert_evaluate"]["do"]
    assert {f"runs/exmed_bert/{v}" for v in exmed.variants} <= set(evaluate["deps"])
    # Others keep one run per evaluation, interleaved.
    train = pipeline.experiment_stages(registry.get("retclip"), ROOT)["retclip_evaluate"]["do"]
    assert "runs/retclip/${item}" in train["deps"] and "runs/retclip/biobert" not in train["deps"]


def test_the_report_stage_writes_only_results_md():
    import yaml

    stage = yaml.safe_load(pipeline.generate(ROOT))["stages"]["report"]
    # Writing the README's block there would write outside its outs, and declared, README.md would be
    # deleted before the stage runs (cache: false) or put the hash of its prose into dvc.lock (persist:
    # true); `./dev repro` writes the block after `dvc repro` (see pipeline.generate).
    assert stage["cmd"] == "medrepro report" and stage["outs"] == [{"results/RESULTS.md": {"cache": False}}]


def _dockerfile_sources(dockerfile: str, experiment: str) -> set[str]:
    """The repository paths a Dockerfile copies or binds into the build, the experiment's name filled in."""
    import re

    text = (ROOT / dockerfile).read_text().replace("${EXPERIMENT}", experiment)
    copied = {m.split()[0] for m in re.findall(r"^COPY\s+(\S+\s+\S+)", text, re.MULTILINE)}
    return copied | set(re.findall(r"--mount=type=bind,source=([^,\s]+)", text))


def test_the_image_stamp_depends_on_what_builds_the_image_and_every_stage_on_the_stamp():
    from medrepro.suite import images

    for experiment in registry.all_experiments():
        stages = pipeline.experiment_stages(experiment, ROOT)
        stamp = stages.pop(f"{experiment.name}_image")
        assert "always_changed" not in stamp, "a stage that always runs keeps `dvc status` from ever being clean"
        deps = set(stamp["deps"])
        read = (_dockerfile_sources(images.BASE_DOCKERFILE, experiment.name)
                | _dockerfile_sources(images.EXPERIMENT_DOCKERFILE, experiment.name))
        # The wheelhouse holds the lock file's wheels, checked against its hashes: the lock stands for it.
        assert read - {"wheelhouse"} <= deps, sorted(read - deps)
        assert {images.BASE_DOCKERFILE, images.EXPERIMENT_DOCKERFILE, ".dockerignore",
                f"{images.BASE_DOCKERFILE}.dockerignore"} <= deps
        # The command names the runner: switching it stamps again.
        assert "--runner ${runner}" in stamp["cmd"]
        for name, stage in stages.items():
            assert f"images/ids/{experiment.name}.txt" in stage.get("do", stage)["deps"], name


def test_no_dependency_is_an_empty_file():
    """DVC warns "'...' is empty." for every stage that depends on an empty file (an empty
    `__init__.py`): one line per stage on every `dvc repro`."""
    import yaml

    stages = yaml.safe_load(pipeline.generate(ROOT))["stages"]
    deps = {d for stage in stages.values() for d in stage.get("do", stage).get("deps", [])
            if "$" not in d and (ROOT / d).is_file() and not d.startswith(("data/", "runs/", "results/"))}
    assert deps, "no source file among the dependencies"
    assert not [d for d in deps if (ROOT / d).stat().st_size == 0]
