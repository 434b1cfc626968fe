"""tf.data input pipelines over a Split, with batched, seeded augmentation.

TensorFlow is imported inside the functions so that importing ``search.data`` stays light.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from search.data.loading import Split
from search.data.schema import IMAGE_SIZE
from search.space import AUGMENT_LIMITS

if TYPE_CHECKING:
    import tensorflow as tf

PARALLEL_CALLS = max(1, min(4, os.cpu_count() or 1))
"""Batches a pipeline maps at once. Fixed rather than autotuned (see `pipeline_options`)."""
PREFETCH = 4
"""Batches a pipeline keeps ready ahead of training."""


def pipeline_options() -> tf.data.Options:
    """tf.data options every pipeline here runs with: autotuning off.

    An iterator's destructor waits for tf.data's autotuning thread, which sleeps between optimisation
    rounds for a period that doubles up to a minute. `model.fit` drops its last epoch's iterator on
    return, so every trial waited for that thread: 3 to 20 s after its last epoch on a quarter of
    Training here, most of the framework's share of a short trial (docs/performance.md). These
    pipelines gather from arrays in memory and need no tuning: fixed parallelism and a small prefetch
    keep them tens of times faster than training.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


@dataclass(frozen=True)
class Augment:
    """Random training-time augmentation, applied to whole batches in one affine warp.

    Attributes:
        flip: random horizontal flip.
        rotation: max rotation as a fraction of 2*pi (Keras ``RandomRotation`` factor).
        zoom: max zoom fraction; the scale is drawn from [1 - zoom, 1 + zoom].
        shift: max translation as a fraction of the image size, both axes.
    """

    flip: bool = True
    rotation: float = 0.0
    zoom: float = 0.0
    shift: float = 0.0

    def __post_init__(self) -> None:
        for field, high in AUGMENT_LIMITS.items():
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= high:
                raise ValueError(f"Augment.{field} must be a number in [0, {high}], got {value!r}")
        if not isinstance(self.flip, (bool, np.bool_)):
            raise ValueError(f"Augment.flip must be true or false, got {self.flip!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.flip) or self.warps

    @property
    def warps(self) -> bool:
        return self.rotation > 0 or self.zoom > 0 or self.shift > 0


def make_dataset(split: Split, *, batch_size: int, training: bool, augment: Augment | None = None,
                 seed: int = 0, epoch: int = 0) -> tf.data.Dataset:
    """Batches of ``(float32 images (b,48,48,1) in 0..255, int32 labels (b,))``.

    ``training=True`` gives epoch ``epoch`` of training: its shuffle and ``augment``'s draws are a
    function of ``seed`` and ``epoch`` alone (the same epoch of a `TrainingPipeline`, batch for batch);
    ``training=False`` keeps the order and never augments. Images are not rescaled.
    """
    import tensorflow as tf

    _check(split, batch_size)
    x, y = tf.constant(split.x), tf.constant(split.y)
    if training:
        on = augment is not None and augment.enabled
        settings = (augment.flip, augment.rotation, augment.zoom, augment.shift) if on else None
        return _training_batches(tf.data.Dataset.from_tensors(np.int64(epoch)), x, y, batch_size=batch_size,
                                 seed=seed, augment=settings)
    ds = tf.data.Dataset.range(len(split)).batch(batch_size)
    # Gathering whole batches of indices is much faster than slicing images one by one.
    ds = ds.map(lambda i: (tf.cast(tf.gather(x, i), tf.float32), tf.gather(y, i)),
                num_parallel_calls=PARALLEL_CALLS, deterministic=True)
    return ds.prefetch(PREFETCH).with_options(pipeline_options())


class TrainingPipeline:
    """Every epoch of training batches as one stream, built once and reused by trial after trial.

    Building a tf.data pipeline traces its functions (about 0.1 s here, with augmentation), and every
    new iterator warms up again. A search builds a model per trial but needs only a few distinct
    pipelines (one per training subset and label form), so what varies from trial to trial, the batch
    size, the augmentation and the first epoch, are variables the pipeline reads, not constants it was
    traced with; and `model.fit` reads one iterator for all its epochs, ``steps_per_epoch`` batches each.

    Epoch ``e``'s order and augmentation are a function of the seed and ``e`` alone, batch for batch
    the same as ``make_dataset(..., epoch=e)``: a run resumed at epoch ``e`` sees what an uninterrupted
    run would have. `configure` it before reading it; settings apply to iterators made after they are
    set, so one trial at a time.
    """

    def __init__(self, split: Split, *, seed: int = 0, one_hot: int | None = None, _tensors: tuple | None = None):
        import tensorflow as tf

        _check(split, 1, "TrainingPipeline")
        self.split, self.seed, self.size = split, seed, len(split)
        self.steps_per_epoch = 0
        with tf.device("/CPU:0"):  # tf.data runs its functions on the host: its variables live there too
            self._batch_size = tf.Variable(1, dtype=tf.int64, trainable=False)
            self._first_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
            self._flip = tf.Variable(False, trainable=False)
            self._warp = [tf.Variable(0.0, trainable=False) for _ in ("rotation", "zoom", "shift")]
        self._tensors = _tensors or (tf.constant(split.x), tf.constant(split.y))
        x, y = self._tensors
        # The first epoch is read when an iterator starts, not when the pipeline is built.
        first = tf.data.Dataset.range(1).map(lambda _: self._first_epoch.read_value())
        epochs = first.flat_map(lambda e: tf.data.Dataset.range(e, np.iinfo(np.int64).max))
        self.dataset = _training_batches(epochs, x, y, batch_size=self._batch_size, seed=seed, one_hot=one_hot,
                                         augment=(self._flip, *self._warp))

    def with_labels(self, one_hot: int | None) -> TrainingPipeline:
        """A pipeline over the same images, seed and epochs, its labels one-hot over ``one_hot`` classes
        (None: class ids). The images are shared, not copied: a copy is 66 MB for all of Training."""
        return TrainingPipeline(self.split, seed=self.seed, one_hot=one_hot, _tensors=self._tensors)

    def configure(self, *, batch_size: int, augment: Augment, first_epoch: int = 0) -> TrainingPipeline:
        """Set the batch size, the augmentation and the epoch the next iterator starts at."""
        _check(None, batch_size, "TrainingPipeline.configure")
        self.steps_per_epoch = math.ceil(self.size / batch_size)
        self._batch_size.assign(batch_size)
        self._flip.assign(bool(augment.flip))
        for variable, value in zip(self._warp, (augment.rotation, augment.zoom, augment.shift)):
            variable.assign(float(value))
        return self.start_at(first_epoch)

    def start_at(self, epoch: int) -> TrainingPipeline:
        """Make the next iterator start at epoch ``epoch`` (0-based)."""
        self._first_epoch.assign(int(epoch))
        return self


def _check(split: Split | None, batch_size: int, where: str = "make_dataset") -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
    if split is not None and len(split) == 0:
        raise ValueError(f"{where}: the split is empty")


def _training_batches(epochs: tf.data.Dataset, x: tf.Tensor, y: tf.Tensor, *, batch_size, seed: int,
                      augment: tuple | None, one_hot: int | None = None) -> tf.data.Dataset:
    """The batches of each epoch index in ``epochs``: a seeded permutation per epoch, cut into batches,
    gathered and augmented with a stateless seed per (epoch, batch). ``augment`` is (flip, rotation,
    zoom, shift) as Python values or variables (read each time a batch is made), or None."""
    import tensorflow as tf

    n = int(x.shape[0])

    def epoch_batches(epoch):
        size = tf.cast(batch_size, tf.int64)  # a Python int, or a variable read as the epoch starts
        order = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([np.int64(seed), 2 * epoch])))
        return tf.data.Dataset.range((n + size - 1) // size).map(lambda b: (order[b * size:(b + 1) * size], epoch, b))

    def load(indices, epoch, batch):
        images, labels = tf.cast(tf.gather(x, indices), tf.float32), tf.gather(y, indices)
        if augment is not None:
            key = tf.random.experimental.stateless_fold_in(tf.stack([np.int64(seed), 2 * epoch + 1]), batch)
            images = _augment(images, key, *augment)
        if one_hot:
            labels = tf.one_hot(labels, one_hot)
        return images, labels

    ds = epochs.flat_map(epoch_batches).map(load, num_parallel_calls=PARALLEL_CALLS, deterministic=True)
    return ds.prefetch(PREFETCH).with_options(pipeline_options())


def augment_batch(images: tf.Tensor, seed: tf.Tensor, augment: Augment) -> tf.Tensor:
    """Flip and warp a float32 ``(b, 48, 48, 1)`` batch; ``seed`` is a stateless seed of shape (2,)."""
    return _augment(images, seed, augment.flip, augment.rotation, augment.zoom, augment.shift)


def _augment(images, seed, flip, rotation, zoom, shift):
    """`augment_batch` with its settings as Python values or tensors (a `TrainingPipeline`'s variables)."""
    import tensorflow as tf

    flip_seed, angle_seed, scale_seed, shift_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4))
    b = tf.shape(images)[0]
    flipped = tf.random.stateless_uniform([b], flip_seed) < tf.where(tf.cast(flip, tf.bool), 0.5, 0.0)
    images = tf.where(flipped[:, None, None, None], tf.reverse(images, axis=[2]), images)
    rotation, zoom, shift = (tf.cast(v, tf.float32) for v in (rotation, zoom, shift))

    def warp():
        max_angle = 2 * math.pi * rotation
        angle = tf.random.stateless_uniform([b], angle_seed, -max_angle, max_angle)
        scale = tf.random.stateless_uniform([b], scale_seed, 1 - zoom, 1 + zoom)
        offset = tf.random.stateless_uniform([b, 2], shift_seed, -shift, shift) * IMAGE_SIZE
        # Output pixel p reads input c + scale * R(angle) (p - c) - offset, about the centre c.
        c = (IMAGE_SIZE - 1) / 2
        cos, sin = scale * tf.cos(angle), scale * tf.sin(angle)
        transforms = tf.stack([cos, -sin, c - cos * c + sin * c - offset[:, 0],
                               sin, cos, c - sin * c - cos * c - offset[:, 1],
                               tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=[IMAGE_SIZE, IMAGE_SIZE],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")

    return tf.cond((rotation > 0) | (zoom > 0) | (shift > 0), warp, lambda: images)
