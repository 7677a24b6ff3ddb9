"""`bench`: ratios against references measured in the same process, on the prepared data.

(a) shards: bytes/s reading and decoding every sample through `ShardDataset` against a raw sequential
    read of the same shard files, on shards of 120 × 240 × 240 volumes (goal ≥ 0.8) and on the smoke
    shards (0.1 MB samples: per-sample overhead only).
(b) zero-shot: `zeroshot.predict` (each volume encoded once) against the per-label re-encoding that
    upstream does (each volume once per label); the scores must agree, the encoder passes fall 18×
    (goal ≥ 10), and the time ratio is reported.
(c) preprocessing: volumes/s of the whole `shards` work per volume (read, HU, resample, clip, crop,
    encode) against nibabel's load of the same volumes alone.
(d) memory: peak resident memory of one DataLoader worker reading the training shards, against the
    bytes of one decoded sample.
(a) runs `repeats` interleaved rounds (both sides back to back in each) and reports the median ratio,
with its min and max under `spread`; the others time each side `repeats` times and keep its best. The
ratios are what to compare across machines, not the absolute rates.
"""

import json
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from torch.utils.data import DataLoader

from experiments.ct_clip import zeroshot
from experiments.ct_clip.config import CtClipConfig
from experiments.ct_clip.ctrate import LABELS
from experiments.ct_clip.data import ShardDataset, encode_sample
from experiments.ct_clip.experiment import EXPERIMENT
from experiments.ct_clip.model import CTClip, build_model, tokenize
from experiments.ct_clip.prepare import RECORDS, _process
from experiments.ct_clip.prompts import prompts
from medrepro.benchmark import interleaved_ratio
from medrepro.config_sections import encoder_path
from medrepro.errors import DataError
from medrepro.shards import write_manifest


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_shards(workdir: Path, shape: tuple[int, int, int], n: int) -> ShardDataset:
    """`n` random samples of `shape` in two shards, written as `shards` writes them."""
    out = workdir / "shards"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with wds.ShardWriter(str(out / "bench-%06d.tar"), maxcount=max(1, n // 2), verbose=0, mtime=0.0) as sink:
        for i in range(n):
            volume = rng.uniform(-1, 1, size=shape).astype(np.float16)
            sink.write(encode_sample(f"bench_{i}", volume, "report", (0,) * len(LABELS), {}))
    write_manifest(sorted(out.glob("*.tar")), out / "manifest.json", {"shape": list(shape)})
    return ShardDataset(out / "manifest.json")


def shard_ratio(dataset: ShardDataset, rounds: int) -> tuple[dict[str, float], dict]:
    """Bytes/s of reading and decoding every sample (`ShardDataset.sample`) against reading the files,
    in interleaved rounds: (rates and the median ratio, the ratio's spread)."""
    files = sorted({shard for shard, _, _ in dataset.items})
    total = sum(p.stat().st_size for p in files)

    def raw() -> None:
        for path in files:
            with open(path, "rb") as f:
                while f.read(1 << 22):
                    pass

    def decoded() -> None:
        for i in range(len(dataset)):
            dataset.sample(i)

    timed = interleaved_ratio(raw, decoded, rounds)
    return ({"mb_per_s_raw": total / timed["reference_s"] / 1e6, "mb_per_s_decoded": total / timed["candidate_s"] / 1e6,
             "mb_per_sample": total / len(dataset) / 1e6, "ratio": timed["median"]}, timed)


@torch.no_grad()
def per_label_reference(model: CTClip, tokenizer, dataset: ShardDataset, batch_size: int, context_length: int,
                        ) -> tuple[np.ndarray, int]:
    """Upstream's loop: for each label, encode its two prompts and every volume again. Scores, passes."""
    model.eval()
    scores, passes = np.zeros((len(dataset), len(LABELS))), 0
    for k, pair in enumerate(prompts()):
        tokens = tokenize(tokenizer, list(pair), context_length)
        text = F.normalize(model.encode_text(**tokens), dim=-1)
        row = 0
        for volumes, _, _ in DataLoader(dataset, batch_size=batch_size):
            image = F.normalize(model.encode_image(volumes), dim=-1)
            passes += 1
            logits = model.temperature.exp() * image @ text.t()
            scores[row:row + len(volumes), k] = torch.softmax(logits.float(), dim=-1)[:, 0].numpy()
            row += len(volumes)
    return scores, passes


def zeroshot_ratio(cfg: CtClipConfig, dataset: ShardDataset, repeats: int) -> dict[str, float]:
    model, tokenizer = build_model(cfg.model, tuple(cfg.data.shape), encoder_path(cfg.encoders, EXPERIMENT.variants[0]))
    args = (model, tokenizer, dataset, cfg.eval.batch_size, cfg.model.context_length)
    pred = zeroshot.predict(*args)
    reference, reference_passes = per_label_reference(*args)
    t_once = _best(lambda: zeroshot.predict(*args), repeats)
    t_per_label = _best(lambda: per_label_reference(*args), repeats)
    return {"zeroshot_max_score_difference": float(np.abs(pred.y_score - reference).max()),
            "zeroshot_encoder_passes": pred.image_passes, "zeroshot_encoder_passes_reference": reference_passes,
            "zeroshot_pass_ratio": reference_passes / pred.image_passes, "zeroshot_time_ratio": t_per_label / t_once}


def preprocess_ratio(cfg: CtClipConfig, n: int, repeats: int) -> dict[str, float]:
    saved = json.loads((Path(cfg.paths.prepared) / RECORDS).read_text())
    records = saved["records"]["valid"][:n]
    tasks = [(r, tuple(cfg.data.spacing), tuple(cfg.data.shape), tuple(cfg.data.report_fields)) for r in records]

    def load_only() -> None:
        for r in records:
            np.asarray(nib.load(r["path"]).dataobj)

    def full() -> None:
        for task in tasks:
            _process(task)

    t_load, t_full = _best(load_only, repeats), _best(full, repeats)
    return {"preprocess_volumes_per_s": len(records) / t_full, "nibabel_load_volumes_per_s": len(records) / t_load,
            "preprocess_ratio": t_load / t_full}


class _PeakMemory(torch.utils.data.Dataset):
    """Each item also reports the peak RSS of the process that loaded it (a loader worker)."""

    def __init__(self, dataset: ShardDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        volume, _, _ = self.dataset[i]
        return volume, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_memory(dataset: ShardDataset) -> dict[str, float]:
    peak = 0
    for _, rss in DataLoader(_PeakMemory(dataset), batch_size=1, num_workers=1):
        peak = max(peak, int(rss.max()))
    sample_bytes = int(np.prod(dataset.shape)) * 4  # decoded as float32
    return {"loader_worker_peak_rss_mb": peak / 1e6, "decoded_sample_mb": sample_bytes / 1e6}


def bench(cfg: CtClipConfig, workdir: Path, repeats: int = 3, preprocess_volumes: int = 16,
          bench_shape: tuple[int, int, int] = (120, 240, 240), bench_samples: int = 8,
          zeroshot_volumes: int = 32) -> dict:
    manifest = Path(cfg.paths.shards) / "train" / "manifest.json"
    if not manifest.is_file():
        raise DataError(f"{manifest} not found: the benchmark reads the prepared data; run "
                        "`medrepro ct_clip prepare` and `medrepro ct_clip shards` first")
    train_set = ShardDataset(manifest)
    valid_set = ShardDataset(Path(cfg.paths.shards) / "valid" / "manifest.json", limit=zeroshot_volumes)
    torch.manual_seed(cfg.seed)
    # Shard reading at the smoke size is all per-sample overhead; `bench_shape` shows the ratio that
    # matters for real volumes (110 MB each at full size).
    large, large_spread = shard_ratio(bench_shards(workdir, bench_shape, bench_samples), repeats)
    smoke, _ = shard_ratio(train_set, repeats)
    rates = {**{f"shard_{k}": v for k, v in large.items()}, **{f"shard_smoke_{k}": v for k, v in smoke.items()},
             **zeroshot_ratio(cfg, valid_set, repeats), **preprocess_ratio(cfg, preprocess_volumes, repeats),
             **worker_memory(train_set)}
    ratio_names = ("shard_ratio", "shard_smoke_ratio", "zeroshot_pass_ratio", "zeroshot_time_ratio",
                   "preprocess_ratio")
    return {
        "setting": {"variant": EXPERIMENT.variants[0], "repeats": repeats, "shape": list(cfg.data.shape),
                    "shard_bench_shape": list(bench_shape), "shard_bench_samples": bench_samples,
                    "train_samples": len(train_set), "val_samples": len(valid_set)},
        "rates": {k: v for k, v in rates.items() if k not in ratio_names},
        "ratios": {k: rates[k] for k in ratio_names},
        "spread": {"shard_ratio": large_spread},
        "goals": {"shard_ratio": 0.8, "zeroshot_pass_ratio": 10.0},
    }
