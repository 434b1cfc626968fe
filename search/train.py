"""`python -m search.train --config FILE`: train one configuration for real, then test it once.

Trains on Training, keeps the weights of the epoch with the best PublicTest (validation) accuracy,
and only then evaluates on PrivateTest (the test split). Writes results/<name>/final/: model.keras,
metrics.json, config.yaml and report.html. An interrupted run resumes from its last epoch.

`--config` takes an exported best_config.yaml, or any space: a space's default point is trained, so
`--config spaces/baseline_cnn.yaml --epochs 120` reproduces the seed's recipe.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from search.cli import UsageError, add_data_flags, check_writable, fail, parse_overrides, quiet_tensorflow
from search.memory import set_up_allocation
from search.run import JIT, PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m search.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="an exported best_config.yaml, or a space (its default point)")
    p.add_argument("--epochs", type=int, help="epochs to train (default: the configuration's budget)")
    p.add_argument("--name", help="output folder under RESULTS (default: the configuration's name)")
    p.add_argument("--fresh", action="store_true", help="ignore an earlier run's checkpoint and start over")
    p.add_argument("--precision", choices=PRECISIONS, default="float32", help="Keras dtype policy: "
                   "mixed_bfloat16 for CPUs with AVX512_BF16 or AMX, mixed_float16 for GPUs (default: float32)")
    p.add_argument("--jit", choices=tuple(JIT), default="auto", help="XLA-compile the training step; auto is "
                   "Keras's choice: on for GPUs, off for CPUs (default: auto)")
    add_data_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    set_up_allocation()  # as search.run trains its trials (search/memory.py)
    from fer_models.resnet_transfer import WeightsUnavailableError
    from search.data import DataError
    from search.space import SpaceError, load_space

    try:
        space = load_space(args.config)
        if args.labels:
            space = space.with_settings(labels=args.labels)
        overrides = parse_overrides(args.overrides)
        if overrides:
            space = with_overrides(space, overrides)
        if args.epochs is not None and args.epochs < 1:
            raise UsageError("--epochs must be at least 1")
        name = args.name or space.name + (f"-{args.labels}" if args.labels else "")
        out = args.results / name / "final"
        check_writable(out)
        metrics = train_final(space, out, data_path=args.data, epochs=args.epochs or space.budget.epochs,
                              seed=args.seed, fresh=args.fresh, precision=args.precision, jit=JIT[args.jit])
    except (SpaceError, DataError, UsageError, WeightsUnavailableError, FileNotFoundError) as exc:
        return fail(str(exc))
    print(f"validation accuracy {metrics['val']['accuracy']:.4f} | test accuracy {metrics['test']['accuracy']:.4f}"
          f" (macro-F1 {metrics['test']['macro_f1']:.4f}; flip TTA {metrics['test_flip_tta']['accuracy']:.4f};"
          f" majority class {metrics['majority_baseline']:.4f})")
    print(f"final model and report: {out}")
    return 0


def with_overrides(space, overrides: dict[str, Any]):
    """The space with `--set` values fixed, and the change on record: an exported configuration's
    description and source name the trial it came from, which no longer holds these values."""
    space = space.with_fixed(overrides)
    values = {k: space.params[k].value for k in overrides}
    changed = ", ".join(f"{k}={v}" for k, v in values.items())
    return space.model_copy(update={"description": f"{space.description} Then changed with --set: {changed}.".strip(),
                                    "source": (space.source or {}) | {"set": values}})


def train_final(space, out: Path, *, data_path, epochs: int, seed: int = 0, fresh: bool = False,
                precision: str = "float32", jit: bool | None = None) -> dict[str, Any]:
    """Train the space's default point, checkpointing into `out`, and write the final artefacts."""
    from search.data import load_fer2013, make_dataset
    from search.objective import Objective

    config = space.defaults()
    checkpoint = out / "checkpoint"
    if fresh and checkpoint.exists():
        shutil.rmtree(checkpoint)
    data = load_fer2013(data_path, labels=space.labels, seed=seed)
    print(f"final training of {space.name} ({space.model}) for {epochs} epochs on {len(data.train)} images; "
          f"validation {len(data.val)}, test {len(data.test)}; {data.num_classes} classes: {', '.join(data.class_names)}",
          flush=True)
    started = time.perf_counter()
    result = Objective(data, space, seed=seed, precision=precision, jit=jit).__call__(
        config, epochs=epochs, subset=1.0, label="final", checkpoint_dir=checkpoint)
    model = result.model
    val_ds = make_dataset(data.val, batch_size=256, training=False)
    test_ds = make_dataset(data.test, batch_size=256, training=False)  # read once, after the choice is made
    val_prob = model.predict(val_ds, verbose=0)
    test_prob = model.predict(test_ds, verbose=0)
    mirrored = dataclasses.replace(data.test, x=np.ascontiguousarray(data.test.x[:, :, ::-1]))
    flipped = make_dataset(mirrored, batch_size=256, training=False)
    tta_prob = (test_prob + model.predict(flipped, verbose=0)) / 2

    metrics = evaluation(data, val_prob, test_prob, tta_prob)
    metrics |= {"epochs": epochs, "best_epoch": result.metrics["best_epoch"], "history": result.history,
                # seconds: this process; training_seconds: every epoch, those of interrupted earlier runs too
                "seconds": time.perf_counter() - started,
                "training_seconds": sum(row["seconds"] for row in result.history),
                "config": config, "labels": list(data.class_names), "source": space.source}
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    (out / "config.yaml").write_text(space.fixed(config, source=space.source).to_yaml())
    write_final_report(out / "report.html", metrics)
    shutil.rmtree(checkpoint, ignore_errors=True)  # the run is complete: nothing left to resume
    return metrics


def evaluation(data, val_prob: np.ndarray, test_prob: np.ndarray, tta_prob: np.ndarray) -> dict[str, Any]:
    """Validation and test metrics, per-class precision and recall, and the majority-class baseline."""
    from search import metrics as m

    from search.data import EMOTIONS, LABEL_MAPS

    k = data.num_classes
    majority = int(np.bincount(data.train.y, minlength=k).argmax())
    collapsed = {}
    if tuple(data.class_names) == EMOTIONS:
        # The 7-class model's answers grouped as fer4, to set beside a model trained on fer4 itself.
        fer4 = LABEL_MAPS["fer4"]
        collapsed["test_collapsed_fer4"] = m.summary(
            fer4.lookup[data.test.y], fer4.lookup[test_prob.argmax(axis=1)], fer4.num_classes)
    cm = m.confusion_matrix(data.test.y, test_prob.argmax(axis=1), k)
    per_class = m.per_class(cm)
    return {
        "class_names": list(data.class_names),
        "val": m.summary(data.val.y, val_prob.argmax(axis=1), k) | {"n": len(data.val)},
        "test": m.summary(data.test.y, test_prob.argmax(axis=1), k) | {"n": len(data.test)},
        "test_flip_tta": m.summary(data.test.y, tta_prob.argmax(axis=1), k),
        "majority_baseline": float(np.mean(data.test.y == majority)),
        "per_class": {
            name: {"precision": float(per_class["precision"][i]), "recall": float(per_class["recall"][i]),
                   "f1": float(per_class["f1"][i]), "support": int(per_class["support"][i])}
            for i, name in enumerate(data.class_names)
        },
        "confusion_matrix": cm.tolist(),
        **collapsed,
    }


def write_final_report(path: Path, metrics: dict[str, Any]) -> None:
    """The confusion matrix and the training curves as one self-contained HTML page."""
    import html

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = metrics["class_names"]
    cm = np.array(metrics["confusion_matrix"])
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    heat = go.Figure(go.Heatmap(z=share, x=names, y=names, text=cm, texttemplate="%{text}",
                                colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "row share"}))
    heat.update_layout(title="Confusion matrix on PrivateTest (rows: true class)", xaxis_title="predicted",
                       yaxis_title="true", yaxis_autorange="reversed", width=700, height=620)
    epochs = list(range(1, len(metrics["history"]) + 1))
    curves = make_subplots(rows=1, cols=2, subplot_titles=("accuracy", "loss"))
    for col, key in ((1, "accuracy"), (2, "loss")):
        for prefix, dash in (("", "dot"), ("val_", None)):
            ys = [h.get(prefix + key) for h in metrics["history"]]
            curves.add_trace(go.Scatter(x=epochs, y=ys, name=f"{prefix or 'train_'}{key}", line={"dash": dash}),
                             row=1, col=col)
    curves.add_vline(x=metrics["best_epoch"], line_dash="dash", annotation_text="best epoch")
    curves.update_layout(title="Training curves", height=450)
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{c['precision']:.3f}</td><td>{c['recall']:.3f}</td>"
        f"<td>{c['f1']:.3f}</td><td>{c['support']}</td></tr>" for n, c in metrics["per_class"].items())
    summary = (f"validation accuracy {metrics['val']['accuracy']:.4f}; test accuracy {metrics['test']['accuracy']:.4f}, "
               f"macro-F1 {metrics['test']['macro_f1']:.4f}, balanced accuracy "
               f"{metrics['test']['balanced_accuracy']:.4f}; flip TTA {metrics['test_flip_tta']['accuracy']:.4f}; "
               f"majority class {metrics['majority_baseline']:.4f}; best epoch {metrics['best_epoch']} of "
               f"{metrics['epochs']}")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>final training</title></head><body>"
        f"<h1>Final training</h1><p>{html.escape(summary)}</p>"
        f"{curves.to_html(full_html=False, include_plotlyjs=True)}"
        f"{heat.to_html(full_html=False, include_plotlyjs=False)}"
        "<h2>Per class on PrivateTest</h2><table border='1' cellpadding='4'><tr><th>class</th><th>precision</th>"
        f"<th>recall</th><th>F1</th><th>support</th></tr>{rows}</table></body></html>"
    )
    path.write_text(page)


if __name__ == "__main__":
    sys.exit(main())
