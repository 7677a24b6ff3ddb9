"""`evaluate`: zero-shot on the test split with the best checkpoint; the numbers, predictions and plots."""

from pathlib import Path

import numpy as np

from experiments.retclip import zeroshot
from experiments.retclip.config import RetClipConfig
from experiments.retclip.model import build_model
from experiments.retclip.odir import CLASSES
from experiments.retclip.prompts import load_prompts
from experiments.retclip.train import encoder_path
from medrepro import atomic, checkpoint, metrics, plots
from medrepro.device import default_device
from medrepro.results import Evaluation

# metrics.json: the headline under the suite's short names (intervals are in details.json).
HEADLINE = {"acc": "accuracy", "bal_acc": "balanced_accuracy", "f1_macro": "f1_macro", "auc": "auc_macro"}


def evaluate(cfg: RetClipConfig, variant: str, run_dir: Path, out_dir: Path, which: str = "best") -> Evaluation:
    model, tokenizer, transform = build_model(cfg.model, encoder_path(cfg, variant))
    ckpt = run_dir / "checkpoints" / "best.pt" if which == "best" else Path(which)
    saved = checkpoint.load(ckpt)
    checkpoint.check_variant(saved, variant, ckpt)
    model.load_state_dict(saved["model"])
    model.to(default_device())
    prompts = load_prompts(Path(cfg.prompts) if cfg.prompts else None)
    pred = zeroshot.predict(model, tokenizer, transform, prompts, Path(cfg.paths.lmdb) / "test", cfg.eval.batch_size)
    result = zeroshot.summarize(pred, cfg.eval.bootstrap, cfg.eval.alpha, cfg.seed)
    result.update({f"logit_scale/{h}": float(s.detach().exp()) for h, s in model.logit_scales.items()})

    cm = metrics.confusion(pred.y_true, pred.y_pred, len(CLASSES))
    plots.confusion_matrix_png(cm, CLASSES, out_dir / "plots" / "confusion_matrix.png",
                               f"retclip {variant}: zero-shot confusion (test eyes)")
    per_class = {c: {m: result[f"{m}/{c}"] for m in ("precision", "recall", "f1")} for c in CLASSES}
    plots.per_class_png(per_class, out_dir / "plots" / "per_class.png", f"retclip {variant}: per-class zero-shot")
    atomic.write_json(out_dir / "predictions.json", {
        "classes": list(CLASSES), "y_true": pred.y_true.tolist(),
        "y_score": np.round(pred.y_score, 6).tolist(),
    })
    info = {"data": cfg.data.source, "encoder": encoder_path(cfg, variant), "checkpoint": str(ckpt),
            "step": saved["train_state"]["step"], "protocol": "single-label eyes, zero-shot"}
    return Evaluation({short: result[name] for short, name in HEADLINE.items()}, result, info)
