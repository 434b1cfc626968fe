"""Keras's BatchNormalization run by TensorFlow's fused kernels.

In training mode Keras 3 normalises with a dozen small ops (the moments' mean, squared difference
and mean, a reciprocal square root, multiplies and adds, each broadcasting) and the gradient tape
adds twice as many (every broadcast's reduction back to the variable's shape). On the TensorFlow
backend every one of them is a graph node that Python traces once per model and the executor
schedules on every step, and a search builds a new model every trial. `FusedBatchNormV3` and its
gradient do the same arithmetic in one op each way: on the seed's CNN the traced training step goes
from 1,048 graph ops to 872 (ResNet50's with conv4 unfrozen from 5,501 to 3,230), and the first step
of a new model (tracing included), the steady step and inference all get faster
(benchmarks/bench_batchnorm.py, docs/performance.md).

`fuse_batchnorm` binds the fused `call` to a plain Keras layer instance, as `_optimizers.fuse` does
for the optimizer, so a saved model records a plain `BatchNormalization` and loads anywhere without
this package (where it runs Keras's own arithmetic: tests/test_models.py checks both against each
other). The moving statistics follow Keras, not the kernel: the kernel's batch variance carries
Bessel's correction, which is taken out again before the moving average.

Inference and a frozen layer (Keras normalises with the moving statistics there) run the kernel's
inference form. Masks, renormalisation, synchronised statistics, an epsilon below the kernel's floor,
other backends and anything but a channels-last 4-D input keep Keras's own `call`.
"""

from __future__ import annotations

import types

import keras


def fuse_batchnorm(layer: keras.layers.BatchNormalization) -> keras.layers.BatchNormalization:
    """Give `layer` TensorFlow's fused kernels; return it. Other layers are returned unchanged."""
    if keras.backend.backend() != "tensorflow" or type(layer) is not keras.layers.BatchNormalization:
        return layer
    if "call" in vars(layer):  # fused already
        return layer
    keras_call = layer.call

    def call(self, inputs, training=None, mask=None):
        if not _fusable(self, inputs, mask):
            return keras_call(inputs, training=training, mask=mask)
        # Keras normalises with the batch's statistics only in training a trainable layer; a frozen one
        # and inference use the moving statistics.
        return _fused_call(self, inputs, training=bool(training and self.trainable))

    layer.call = types.MethodType(call, layer)
    return layer


# tf.nn.fused_batch_norm raises a smaller epsilon to this (cuDNN's floor); such layers keep Keras's call.
_KERNEL_MIN_EPSILON = 1.001e-5


def _fusable(layer: keras.layers.BatchNormalization, inputs, mask) -> bool:
    rank = len(inputs.shape)
    return (
        mask is None
        and rank == 4
        and layer.axis in (-1, rank - 1)
        and not layer.renorm
        and not layer.synchronized
        and inputs.shape[-1] is not None
        and layer.epsilon >= _KERNEL_MIN_EPSILON
    )


def _fused_call(layer: keras.layers.BatchNormalization, inputs, *, training: bool):
    import tensorflow as tf

    # As Keras does: the statistics in float32 whatever the policy (bfloat16 overflows), output in the layer's.
    x = tf.cast(inputs, tf.float32)
    channels = x.shape[-1]
    scale = tf.cast(layer.gamma, tf.float32) if layer.scale else tf.ones([channels], tf.float32)
    offset = tf.cast(layer.beta, tf.float32) if layer.center else tf.zeros([channels], tf.float32)
    if not training:
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, mean=tf.cast(layer.moving_mean, tf.float32),
            variance=tf.cast(layer.moving_variance, tf.float32), epsilon=layer.epsilon, data_format="NHWC",
            is_training=False,
        )
        return tf.cast(y, layer.compute_dtype)
    y, mean, corrected_variance = tf.compat.v1.nn.fused_batch_norm(
        x, scale, offset, epsilon=layer.epsilon, data_format="NHWC", is_training=True
    )
    # The kernel returns the batch variance times n / (n - 1), n the values per channel (at least 1);
    # Keras's moving variance averages the plain batch variance.
    n = tf.cast(tf.size(x, out_type=tf.int64) // channels, tf.float32)
    variance = corrected_variance * (tf.maximum(n - 1.0, 1.0) / n)
    momentum = layer.momentum
    layer.moving_mean.assign(
        tf.cast(layer.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum)
    )
    layer.moving_variance.assign(
        tf.cast(layer.moving_variance, tf.float32) * momentum + variance * (1.0 - momentum)
    )
    return tf.cast(y, layer.compute_dtype)
