"""The one training objective both drivers share: a configuration in, validation metrics out.

Only the sampling step differs between Optuna and KerasTuner; everything from building the model to
choosing the best epoch happens here, so a trial means the same thing under either driver and under
the final training of `search.train`.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from search import interrupts, metrics
from search.data import Augment, FERData, Split, make_dataset
from search.data.pipeline import TrainingPipeline
from search.memory import return_freed_memory
from search.space import LR_SCHEDULES, TRAINING_DEFAULTS, Space

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
"""Keras dtype policies a trial may train under: mixed_bfloat16 for CPUs with AVX512_BF16/AMX (and
TPUs), mixed_float16 for GPUs. The output layer stays float32, so probabilities are float32 either way."""

EpochHook = Callable[[int, dict[str, float]], None]
"""Called after every epoch with the epoch index (0-based) and its logs, which carry
`best_val_accuracy` (the best so far). It may raise (e.g. `optuna.TrialPruned`) to stop the trial."""


class TrialFailed(RuntimeError):
    """A trial that cannot produce a metric (its loss went NaN, say). The search goes on."""


@dataclass
class TrialResult:
    """What a finished trial reports: the best epoch's validation metrics and the learning curve."""

    value: float  # validation accuracy at the best epoch: the objective
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    model: Any = None  # the keras.Model with the best epoch's weights restored

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def split_config(config: dict[str, Any], builder_params: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(builder keyword arguments, training settings with their defaults filled in)."""
    model_kwargs = {k: v for k, v in config.items() if k in builder_params}
    training = TRAINING_DEFAULTS | {k: v for k, v in config.items() if k in TRAINING_DEFAULTS}
    return model_kwargs, training


class Objective:
    """Trains configurations of one space on data loaded once per process.

    Args:
        data: the loaded FER2013 splits (already mapped to the space's labels).
        space: the search space; its budget gives the epochs and the training subset.
        seed: seeds Python, NumPy and TensorFlow at the start of every trial.
        log: where per-epoch progress lines go (`print` by default; None for silence).
        precision: the Keras dtype policy models are built under, one of `PRECISIONS`.
        jit: XLA-compile the training step (True), never (False), or Keras's choice (None: XLA on
            GPUs, not on CPUs, where it measured slower for these models; see docs/performance.md).
    """

    def __init__(self, data: FERData, space: Space, *, seed: int = 0, log: Callable[[str], None] | None = print,
                 precision: str = "float32", jit: bool | None = None):
        from fer_models import builder_defaults, get_builder

        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if precision == "mixed_float16" and not _has_gpu():
            from search.cli import UsageError

            raise UsageError(
                "precision mixed_float16 needs a GPU, and TensorFlow sees none: CPUs have no fast float16 "
                "convolutions (a training step measured over 100x slower than float32 here; see "
                "docs/performance.md). Use mixed_bfloat16 on CPUs with AVX512_BF16 or AMX, else float32")
        self.data, self.space, self.seed, self.log = data, space, seed, log
        self.precision, self.jit = precision, jit
        self.builder = get_builder(space.model)
        self.builder_params = set(builder_defaults(space.model))
        self._subsets: dict[float, Split] = {}
        self._pipelines: dict[tuple[float, bool], TrainingPipeline] = {}
        self._val_ds = None
        self.preflight()
        # Every trial starts with clear_session(), whose full garbage collection walked every object
        # TensorFlow and Keras made at import (0.2-0.3 s a trial here). Those live as long as the
        # process: move them out of the collector's sight, after collecting what is garbage now.
        gc.collect()
        gc.freeze()

    def preflight(self) -> None:
        """Fail before any trial on what would fail every trial: pretrained weights that cannot be had."""
        weights = self.space.defaults().get("weights")
        if "weights" in self.builder_params and weights is not None:
            from fer_models.resnet_transfer import resolve_weights

            resolve_weights(weights)

    @property
    def chance_threshold(self) -> float:
        """The validation accuracy a model must beat to have learned anything measurable: the share
        of the most common validation class (what always predicting it scores) plus two binomial
        standard errors. On FER2013 (PublicTest, 7 classes) that is 0.249 + 0.014."""
        shares = np.bincount(self.data.val.y, minlength=self.data.num_classes) / len(self.data.val)
        p = float(shares.max())
        return p + 2 * math.sqrt(p * (1 - p) / len(self.data.val))

    def train_split(self, subset: float) -> Split:
        if subset not in self._subsets:  # stratified subsets are cheap but not free: keep them
            self._subsets[subset] = self.data.subset(subset, seed=self.seed).train
        return self._subsets[subset]

    def build(self, config: dict[str, Any]):
        """A compiled model for `config`, in a fresh Keras session, under the objective's precision."""
        keras.backend.clear_session()  # memory grows across in-process trials without it (and collects)
        return_freed_memory(collect=False)
        keras.utils.set_random_seed(self.seed)
        model_kwargs, _ = split_config(config, self.builder_params)
        # Layers take the global policy when they are built; restore it so nothing else in the
        # process (another objective, a test) inherits this one's precision.
        keras.mixed_precision.set_global_policy(self.precision)
        try:
            model = self.builder(**model_kwargs, num_classes=self.data.num_classes, seed=self.seed)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        if self.jit is not None:
            model.jit_compile = self.jit  # read when fit() first traces the training step
        return model

    def datasets(self, config: dict[str, Any], subset: float | None = None) -> tuple[TrainingPipeline, Any]:
        """(training pipeline, validation dataset) for `config`: its batch size and augmentation.

        Both are built once per objective and reused: the training pipeline per subset and label form
        (one-hot under label smoothing; the two forms share the subset's images), set to the
        configuration's batch size and augmentation, starting at epoch 0. Its dataset runs over every
        epoch: pass `steps_per_epoch` to `fit`."""
        _, training = split_config(config, self.builder_params)
        augment = Augment(
            flip=bool(training["flip"]),
            rotation=float(training["rotation"]),
            zoom=float(training["zoom"]),
            shift=float(training["shift"]),
        )
        subset = subset or self.space.budget.subset
        one_hot = bool(training["label_smoothing"])
        if (subset, one_hot) not in self._pipelines:
            labels = self.data.num_classes if one_hot else None
            other = self._pipelines.get((subset, not one_hot))
            if other is not None:  # the other label form has the subset's images: share them
                self._pipelines[subset, one_hot] = other.with_labels(labels)
            else:
                self._pipelines[subset, one_hot] = TrainingPipeline(self.train_split(subset), seed=self.seed,
                                                                    one_hot=labels)
        if self._val_ds is None:
            self._val_ds = make_dataset(self.data.val, batch_size=256, training=False)
        pipeline = self._pipelines[subset, one_hot].configure(batch_size=int(training["batch_size"]), augment=augment)
        return pipeline, self._val_ds

    def __call__(
        self,
        config: dict[str, Any],
        *,
        epochs: int | None = None,
        subset: float | None = None,
        on_epoch: EpochHook | None = None,
        callbacks: list[Any] = (),  # type: ignore[assignment]
        label: str = "trial",
        checkpoint_dir: Path | None = None,
    ) -> TrialResult:
        """Train `config` and return its best epoch's validation metrics.

        With `checkpoint_dir`, every epoch is checkpointed there (the model and optimizer state,
        the best epoch's weights and the learning curve) and an interrupted run resumes from it.

        Raises:
            TrialFailed: the loss became NaN or infinite.
        """
        epochs = epochs or self.space.budget.epochs
        subset = subset or self.space.budget.subset
        _, training = split_config(config, self.builder_params)
        started = time.perf_counter()
        model = self.build(config)
        if training["label_smoothing"]:
            # Keras's sparse cross-entropy has no label smoothing: the categorical one, on one-hot labels
            # (datasets() makes them), with the builder's optimizer; validation reads probabilities alone.
            model.compile(optimizer=model.optimizer, metrics=["accuracy"],
                          loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(training["label_smoothing"])))
        train, val = self.train_split(subset), self.data.val
        pipeline, val_ds = self.datasets(config, subset)
        best = _BestEpoch(val_ds, val.y, self.data.num_classes, on_epoch=on_epoch, log=self.log, label=label,
                          epochs=epochs, started=started, checkpoint_dir=checkpoint_dir,
                          call_options=_function_call_options())
        # The schedule starts from the configuration's rate, read before a resumed run restores a decayed one.
        schedule = _schedule(training["lr_schedule"], epochs, float(model.optimizer.learning_rate))
        all_callbacks = [_NanGuard(), _StopOnCtrlC(), _FirstEpoch(pipeline), best, *schedule, *callbacks]
        # Variables made inside the first training step make TensorFlow trace the step twice (about
        # 0.75 s a trial here): the optimizer's (a checkpoint would skip their saved state too) and the
        # compiled metrics', which Keras builds there when no distribution strategy is set.
        model.optimizer.build(model.trainable_variables)
        _build_compiled_metrics(model, self.data.num_classes, one_hot=bool(training["label_smoothing"]))
        _train_in_one_function(model)
        if checkpoint_dir is not None:
            best.resume(model)
            # after _BestEpoch, so the curve and the best weights are on disk before the epoch counts as done
            all_callbacks.append(keras.callbacks.BackupAndRestore(str(Path(checkpoint_dir) / "backup")))
        with _without_grappler():  # the training step's; _BestEpoch validates with the options in force here
            model.fit(  # no validation_data: _BestEpoch validates, once per epoch, every metric from one pass
                pipeline.dataset,
                epochs=epochs,
                steps_per_epoch=pipeline.steps_per_epoch,  # one iterator over every epoch
                class_weight=self.data.class_weights() if training["class_weights"] else None,
                callbacks=all_callbacks,
                shuffle=False,  # the dataset shuffles itself, every epoch
                verbose=0,
            )
        if best.weights is None:
            raise TrialFailed("training stopped before the first epoch ended")
        model.set_weights(best.weights)
        best_row = best.history[best.best_epoch]
        result_metrics = {
            "val_accuracy": best.best_accuracy,
            "val_loss": best_row["val_loss"],
            "val_macro_f1": best_row["val_macro_f1"],
            "val_balanced_accuracy": best_row["val_balanced_accuracy"],
            "best_epoch": best.best_epoch + 1,
            "epochs_run": len(best.history),
            "train_images": len(train),
            "seconds": time.perf_counter() - started,
            "first_step_seconds": best.first_step_seconds,
        }
        return TrialResult(value=best.best_accuracy, metrics=result_metrics, history=best.history, model=model)


def _build_compiled_metrics(model, num_classes: int, *, one_hot: bool) -> None:
    """Build the metrics passed to `compile` now, eagerly, on one dummy prediction, then zero them."""
    y_pred = np.full((1, num_classes), 1.0 / num_classes, dtype="float32")
    y_true = y_pred if one_hot else np.zeros((1,), dtype="int32")
    model.compute_metrics(None, y_true, y_pred)
    model.reset_metrics()


def _train_in_one_function(model) -> None:
    """Have `fit` trace a new model's training step into one `tf.function`, not Keras's two nested ones.

    Keras's TensorFlow trainer puts the step (forward pass, loss, gradients, update, metrics) in a
    `tf.function` of its own, so that `jit_compile` can apply to it alone, and calls it from a second
    one that reads the iterator. Every new model traces both, and the outer graph captures again every
    variable the inner one captured (123 more graph operations on the seed's CNN, and a second function
    for TensorFlow to instantiate). Without XLA nothing needs the inner function: here Keras's own
    `train_step`, under the model's distribution strategy, is traced straight into the function that
    reads the iterator, the same operations in one graph. Keras's functions stay under `jit_compile`,
    with `steps_per_execution` above 1, under a distribution strategy, when running eagerly, and for
    input that is not a tf.data iterator (`train_on_batch`'s). Set after the last `compile`, which
    resets it (benchmarks/bench_train_function.py, docs/performance.md)."""
    import tensorflow as tf

    model.make_train_function(force=True)
    keras_function = model.train_function
    default_strategy = not tf.distribute.has_strategy() and model.distribute_strategy is tf.distribute.get_strategy()
    if model.jit_compile or model.steps_per_execution != 1 or model.run_eagerly or not default_strategy:
        return

    @tf.autograph.experimental.do_not_convert
    def training_step_on_iterator(iterator):
        # Keras's step reads a missing part of a batch (sample weights) as None, not as an empty Optional
        data = keras.tree.map_structure(lambda part: None if isinstance(part, tf.experimental.Optional) else part,
                                        iterator.get_next())
        return model.distribute_strategy.run(model.train_step, args=(data,))

    step = tf.function(training_step_on_iterator, reduce_retracing=True)

    def train_function(iterator):
        if isinstance(iterator, tf.data.Iterator):
            return step(iterator)
        return keras_function(iterator)

    model.train_function = train_function


def _function_call_options():
    """The options TensorFlow runs this thread's `tf.function` calls with (Grappler's among them)."""
    from tensorflow.python.eager import context

    return context.context().function_call_options


@contextlib.contextmanager
def _call_options(options):
    """Run this thread's `tf.function` calls with `options` (None: as they are), then with what was in
    force before."""
    from tensorflow.python.eager import context

    if options is None:
        yield
        return
    ctx = context.context()
    saved = ctx.function_call_options
    ctx.function_call_options = options
    try:
        yield
    finally:
        ctx.function_call_options = saved


def _without_grappler():
    """This thread's `tf.function` calls, for the block, without Grappler's graph optimizations.

    TensorFlow optimizes a function's graph once, when it is first called, with the options in force
    then, and optimizes it again if it is called with others. Every trial is a new model, and Grappler
    took about 0.12 s of the seed's CNN's first training step (0.9 s of the ResNet's) for a steady
    step no faster (0.98-1.04x); the inference pass is 2-6% faster with it, so validation keeps it
    (benchmarks/bench_grappler.py, docs/performance.md)."""
    from tensorflow.core.protobuf import config_pb2

    options = copy.copy(_function_call_options())
    config = config_pb2.ConfigProto.FromString(options.config_proto_serialized)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    options.config_proto_serialized = config
    return _call_options(options)


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


class _NanGuard(keras.callbacks.Callback):
    """Fails the trial on the first batch whose loss is NaN or infinite (TerminateOnNaN only stops)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrialFailed(f"the training loss became {float(loss)} at batch {batch + 1}; "
                              f"the learning rate may be too high for this configuration")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch


class _FirstEpoch(keras.callbacks.Callback):
    """Starts the training pipeline at the epoch `fit` starts at: 0, or where a resumed run left off
    (`BackupAndRestore` sets it before the first epoch begins; `fit` makes its iterator after)."""

    def __init__(self, pipeline: TrainingPipeline):
        super().__init__()
        self.pipeline, self.started = pipeline, False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not self.started:
            self.pipeline.start_at(epoch)
            self.started = True


class _StopOnCtrlC(keras.callbacks.Callback):
    """Acts on a Ctrl-C that `search.interrupts` recorded, after the training step it came in."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        interrupts.check()


class _BestEpoch(keras.callbacks.Callback):
    """Validates after every epoch, keeps the best epoch's weights in memory (checkpointing by
    validation accuracy), records the learning curve, prints one progress line per epoch and hands
    the epoch to the driver's hook.

    Validation is one forward pass from which accuracy, loss, macro-F1 and balanced accuracy are
    all computed, rather than Keras's `validation_data` (an `evaluate` pass) plus a `predict` pass
    at the end for the F1: one function fewer to trace and one validation pass fewer a trial. The
    pass is a function of its own, traced once for any batch size (Keras's `predict` traces again for
    the last, smaller batch, and adds its own bookkeeping to every pass). The
    loss and accuracy are written into the epoch's logs, so later callbacks (ReduceLROnPlateau)
    read `val_loss` as they would from Keras.
    """

    def __init__(self, val_ds, val_y: np.ndarray, num_classes: int, *, on_epoch: EpochHook | None, log,
                 label: str, epochs: int, started: float, checkpoint_dir: Path | None = None, call_options=None):
        super().__init__()
        self.call_options = call_options  # what the validation pass runs with (None: what is in force)
        self.val_ds, self.val_y, self.num_classes = val_ds, np.asarray(val_y), num_classes
        self.on_epoch, self.log, self.label, self.epochs, self.started = on_epoch, log, label, epochs, started
        self.history: list[dict[str, float]] = []
        self.best_accuracy, self.best_epoch, self.weights = -1.0, -1, None
        self.first_step_seconds: float | None = None
        self._epoch_started = started
        self.dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._forward_fn = self._forward_model = None
        self._seed_states = None  # of the run being resumed, for the epoch it resumes at

    def resume(self, model) -> None:
        """Take up the curve and the best weights a checkpointed run left behind."""
        state_file = self.dir / "state.json"
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text())
        self.history, self.best_accuracy, self.best_epoch = state["history"], state["best_accuracy"], state["best_epoch"]
        model.load_weights(self.dir / "best.weights.h5")
        self.weights = model.get_weights()
        self._seed_states = state.get("seed_states")
        if self.log:
            self.log(f"{self.label} | resuming after epoch {len(self.history)} (best {self.best_accuracy:.4f} "
                     f"at epoch {self.best_epoch + 1})")

    def _save(self, improved: bool) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if improved:
            self.model.save_weights(self.dir / "best-partial.weights.h5")
            os.replace(self.dir / "best-partial.weights.h5", self.dir / "best.weights.h5")
        state = {"history": self.history, "best_accuracy": self.best_accuracy, "best_epoch": self.best_epoch,
                 "seed_states": [v.numpy().tolist() for v in _seed_states(self.model)]}
        (self.dir / "state.tmp.json").write_text(json.dumps(state))
        os.replace(self.dir / "state.tmp.json", self.dir / "state.json")

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self.first_step_seconds is None:
            self.first_step_seconds = time.perf_counter() - self.started

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_started = time.perf_counter()
        if self._seed_states is not None and epoch == len(self.history):
            # Dropout's generators go on from where they were (weights files leave them out). Not when
            # the run was stopped between saving its curve and its backup: they are an epoch ahead then.
            for variable, value in zip(_seed_states(self.model), self._seed_states, strict=True):
                variable.assign(np.asarray(value, dtype=variable.dtype))
        self._seed_states = None
        del self.history[epoch:]  # an epoch interrupted after its curve was saved runs again

    def _forward(self):
        if self._forward_fn is None or self._forward_model is not self.model:
            import tensorflow as tf

            model = self.model
            self._forward_fn = tf.function(lambda x: model(x, training=False), jit_compile=bool(model.jit_compile),
                                           input_signature=[self.val_ds.element_spec[0]])
            self._forward_model = model
        return self._forward_fn

    def validate(self) -> dict[str, float]:
        forward = self._forward()
        with _call_options(self.call_options):
            probabilities = np.concatenate([forward(x).numpy() for x, _ in self.val_ds])
        picked = probabilities[np.arange(len(self.val_y)), self.val_y].astype(np.float64)
        scores = metrics.summary(self.val_y, probabilities.argmax(axis=1), self.num_classes)
        return {
            # Keras's sparse cross-entropy: probabilities clipped to [1e-7, 1 - 1e-7]
            "val_loss": float(np.mean(-np.log(np.clip(picked, 1e-7, 1 - 1e-7)))),
            "val_accuracy": scores["accuracy"],
            "val_macro_f1": scores["macro_f1"],
            "val_balanced_accuracy": scores["balanced_accuracy"],
        }

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = self.validate()
        if logs is not None:
            logs.update(val_loss=scores["val_loss"], val_accuracy=scores["val_accuracy"])
        logs = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        row = {k: logs[k] for k in ("loss", "accuracy") if k in logs} | scores
        row["learning_rate"] = float(self.model.optimizer.learning_rate)  # what this epoch trained at
        row["seconds"] = time.perf_counter() - self._epoch_started
        self.history.append(row)
        accuracy = row.get("val_accuracy", float("nan"))
        if not math.isfinite(row.get("val_loss", 0.0)):
            raise TrialFailed(f"the validation loss became {row['val_loss']} at epoch {epoch + 1}")
        improved = accuracy > self.best_accuracy
        if improved:
            self.best_accuracy, self.best_epoch = accuracy, epoch
            self.weights = self.model.get_weights()
        if self.dir is not None:
            self._save(improved)
        if self.log:
            self.log(
                f"{self.label} | epoch {epoch + 1:>3}/{self.epochs} | loss {row.get('loss', float('nan')):.4f} "
                f"acc {row.get('accuracy', float('nan')):.4f} | val_loss {row.get('val_loss', float('nan')):.4f} "
                f"val_acc {accuracy:.4f} (best {self.best_accuracy:.4f}) | {row['seconds']:.1f}s"
            )
        if self.on_epoch:
            self.on_epoch(epoch, row | {"best_val_accuracy": self.best_accuracy})


def _seed_states(model) -> list:
    """The model's random-number generator states (its dropout layers'): its variables that are not weights."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _schedule(kind: str, epochs: int, base: float) -> list[Any]:
    if kind == "constant":
        return []
    if kind == "plateau":
        return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_lr=1e-6)]
    if kind == "cosine":
        return [_Cosine(epochs, base)]
    raise ValueError(f"lr_schedule {kind!r} is not one of {', '.join(LR_SCHEDULES)}")


class _Cosine(keras.callbacks.Callback):
    """Cosine decay of the learning rate from `base` towards zero over the trial's epochs, set at the
    start of each epoch from the epoch's index alone, so a resumed run continues the same curve."""

    def __init__(self, epochs: int, base: float):
        super().__init__()
        self.epochs, self.base = epochs, base

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.optimizer.learning_rate = self.base * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
