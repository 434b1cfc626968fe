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
                 seed: int = 0) -> tf.data.Dataset:
    """Batches of ``(float32 images (b,48,48,1) in 0..255, int32 labels (b,))``.

    ``training=True`` shuffles (seeded, reshuffled every epoch) and applies ``augment``;
    ``training=False`` keeps the order and never augments. Images are not rescaled.
    """
    import tensorflow as tf

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"make_dataset: batch_size must be a positive integer, got {batch_size!r}")
    n = len(split)
    if n == 0:
        raise ValueError("make_dataset: the split is empty")
    x, y = tf.constant(split.x), tf.constant(split.y)
    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    # Gathering whole batches of indices is much faster than slicing images one by one.
    ds = ds.batch(batch_size).map(lambda i: (tf.cast(tf.gather(x, i), tf.float32), tf.gather(y, i)),
                                  num_parallel_calls=PARALLEL_CALLS, deterministic=True)
    if training and augment is not None and augment.enabled:
        # One stateless seed per batch, drawn afresh each epoch: deterministic yet never repeating.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, s: (augment_batch(batch[0], s, augment), batch[1]),
            num_parallel_calls=PARALLEL_CALLS, deterministic=True)
    return ds.prefetch(PREFETCH).with_options(pipeline_options())


def augment_batch(images: tf.Tensor, seed: tf.Tensor, augment: Augment) -> tf.Tensor:
    """Flip and warp a float32 ``(b, 48, 48, 1)`` batch; ``seed`` is a stateless seed of shape (2,)."""
    import tensorflow as tf

    flip_seed, angle_seed, scale_seed, shift_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4))
    b = tf.shape(images)[0]
    if augment.flip:
        flip = tf.random.stateless_uniform([b], flip_seed) < 0.5
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    if not augment.warps:
        return images
    max_angle = 2 * math.pi * augment.rotation
    angle = tf.random.stateless_uniform([b], angle_seed, -max_angle, max_angle)
    scale = tf.random.stateless_uniform([b], scale_seed, 1 - augment.zoom, 1 + augment.zoom)
    shift = tf.random.stateless_uniform([b, 2], shift_seed, -augment.shift, augment.shift) * IMAGE_SIZE
    # Output pixel p reads input c + scale * R(angle) (p - c) - shift, about the centre c.
    c = (IMAGE_SIZE - 1) / 2
    cos, sin = scale * tf.cos(angle), scale * tf.sin(angle)
    transforms = tf.stack([cos, -sin, c - cos * c + sin * c - shift[:, 0],
                           sin, cos, c - sin * c - cos * c - shift[:, 1],
                           tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[IMAGE_SIZE, IMAGE_SIZE],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
