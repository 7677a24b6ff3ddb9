"""`medrepro cross_encoder evaluate --weights`: the released SapBERT's layout (the tiny upstream fixture of
tests/fixtures/cross_encoder) linking the smoke profile's synthetic test mentions, end to end through the
command line into a `published` row of the report; a release with a renamed tensor is one line, exit 2."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import medrepro, process_env

pytestmark = pytest.mark.integration

RELEASED = Path(__file__).resolve().parents[1] / "fixtures" / "cross_encoder" / "sapbert-tiny"
# A smaller synthetic corpus than the smoke profile's: every split still has linkable mentions.
DATA = ["--profile", "smoke", "data.synthetic_concepts=120", "data.synthetic_documents=80"]


def test_the_released_bi_encoder_links_the_test_mentions_into_a_published_row(tmp_path):
    # The released model needs the prepared mentions and concepts only, not the stages that train one (the
    # pipeline's index and mined negatives): evaluate checks for prepare's output alone.
    refused = medrepro(["cross_encoder", "evaluate", "--weights", str(RELEASED), *DATA], tmp_path, check=False)
    assert refused.returncode == 2 and "medrepro cross_encoder prepare" in refused.stderr
    medrepro(["cross_encoder", "prepare", *DATA], tmp_path)
    results = tmp_path / "results"
    out = results / "cross_encoder" / "published"
    # The release by its hub id, from a Hugging Face cache that holds it (the cache's layout), offline.
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--cambridgeltl--SapBERT-tiny" / "snapshots" / "0123abcd"
    shutil.copytree(RELEASED, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    medrepro(["cross_encoder", "evaluate", "--weights", "cambridgeltl/SapBERT-tiny", "--out", str(out), *DATA],
             tmp_path, env={**process_env(), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})

    info = json.loads((out / "info.json").read_text())
    assert info["weights"] == "published" and info["checkpoint"] == str(snapshot.resolve())
    assert set(info["source"]["sha256"]) == {p.name for p in RELEASED.iterdir()}
    assert "raw inner product" in info["protocol"]
    metrics = json.loads((out / "metrics.json").read_text())
    details = json.loads((out / "details.json").read_text())
    assert metrics == {"acc1": details["linking/biencoder_acc_at_1"], "acc5": details["linking/biencoder_acc_at_5"]}
    for name in ("biencoder_acc_at_1", "biencoder_acc_at_5", "most_frequent_acc_at_1", "most_frequent_acc_at_5"):
        key = f"linking/{name}"
        assert 0 <= details[f"{key}_ci_low"] <= details[key] <= details[f"{key}_ci_high"] <= 1, name
    assert details["linking/biencoder_acc_at_1"] <= details["linking/biencoder_acc_at_5"]
    assert 0 <= details["linking/biencoder_acc_at_5_by_name"] <= 1

    # The mentions and the trivial linker, counted here from the prepared table.
    mentions = [json.loads(line) for line in
                (tmp_path / "data" / "cross_encoder" / "prepared" / "mentions.jsonl").read_text().splitlines()]
    test = [m["gold"] for m in mentions if m["split"] == "test" and m["gold"]]
    counts = Counter(m["gold"] for m in mentions if m["split"] == "train" and m["gold"])
    frequent = sorted(counts, key=lambda cui: (-counts[cui], cui))[:5]
    assert details["linking/mentions"] == len(test)
    assert details["linking/most_frequent_acc_at_1"] == pytest.approx(sum(g == frequent[0] for g in test) / len(test))
    assert details["linking/most_frequent_acc_at_5"] == pytest.approx(sum(g in frequent for g in test) / len(test))
    assert (out / "plots" / "linking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    medrepro(["report", "--results", str(results)], tmp_path)
    row = next(line for line in (results / "RESULTS.md").read_text().splitlines() if line.startswith("| published |"))
    assert f"{100 * details['linking/biencoder_acc_at_1']:.1f} [" in row and "acc@1 50.8" in row

    renamed = tmp_path / "renamed"
    shutil.copytree(RELEASED, renamed)
    state = torch.load(renamed / "pytorch_model.bin", weights_only=True)
    state["encoder.layer.0.output.dense.weights"] = state.pop("encoder.layer.0.output.dense.weight")
    torch.save(state, renamed / "pytorch_model.bin")
    refused = medrepro(["cross_encoder", "evaluate", "--weights", str(renamed), "--out", str(tmp_path / "refused"),
                        *DATA], tmp_path, check=False)
    assert refused.returncode == 2 and "'encoder.layer.0.output.dense.weights'" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (tmp_path / "refused").exists()
