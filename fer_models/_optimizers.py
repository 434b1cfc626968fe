"""Keras's Adam, AdamW and momentum SGD, each variable updated by one fused TensorFlow kernel.

Keras 3 writes an optimizer's update as a dozen small ops a variable (Adam: cast, power, sqrt,
subtract, multiply, three assignments...). On the TensorFlow backend every one of them is a graph
node that Python traces once per model and the executor schedules on every step. A search builds a
new model every trial, so that tracing is paid every trial, and the seed's CNN has 56 variables.
TensorFlow's fused kernels (`ResourceApplyAdam`, `ResourceApplyKerasMomentum`) do the same
arithmetic in one op a variable: on the seed's CNN the first `fit` call of a new model (tracing
included) is 1.4x faster, a steady step about as fast (benchmarks/bench_optimizer.py,
docs/performance.md). The scalars those kernels share (the step, the beta powers, the rate, the
betas, epsilon) are made once per update of all variables rather than once per variable: on the
seed's CNN that takes its traced training step from 1,518 graph ops to 1,113.

`fuse` binds the fused step to a plain Keras optimizer instance rather than subclassing it, so a
saved model records a plain `Adam` or `SGD` and loads anywhere without this package (where it runs
Keras's own update, the same arithmetic: tests/test_models.py checks both against each other).
Other backends, AMSGrad, plain SGD and sparse gradients keep Keras's own update step.

Outside a distribution strategy, `fuse` also skips Keras's all-reduce of the gradients, a sum over
the one replica there is. TensorFlow writes that all-reduce with `tf.custom_gradient`, which in a
graph registers a gradient function in TensorFlow's process-wide registry that is never removed and
holds the whole traced training step, with the model's variables and the optimizer's slots: every
trial in a process left its model behind, and Python's garbage collector walked more with each.
"""

from __future__ import annotations

import types

import keras


def fuse(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Give `optimizer` (Adam, AdamW or SGD with momentum) a fused update step; return it."""
    if keras.backend.backend() != "tensorflow":
        return optimizer
    if isinstance(optimizer, keras.optimizers.Adam | keras.optimizers.AdamW) and not optimizer.amsgrad:
        step = _adam_step
    elif isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum > 0:
        step = _momentum_step
    else:
        step = None
    # The scalars every variable's kernel takes, by dtype, made by the first variable's step of each update of
    # all variables and reused by the rest. Never across updates: a graph may hold several (steps_per_execution).
    shared: dict | None = None
    keras_step, keras_update_all = optimizer.update_step, optimizer._backend_update_step

    def update_all(self, grads, variables, learning_rate):
        import tensorflow as tf

        nonlocal shared
        shared = {}
        try:
            if tf.distribute.has_strategy():  # replicas to sum over: Keras's all-reduce and per-replica update
                return keras_update_all(grads, variables, learning_rate)
            for gradient, variable in zip(grads, variables, strict=True):  # Keras has left out missing gradients
                self.update_step(gradient, variable.value if isinstance(variable, keras.Variable) else variable,
                                 learning_rate)
        finally:
            shared = None

    def update_step(self, gradient, variable, learning_rate):
        if step is None or not _fusable(gradient, variable):
            return keras_step(gradient, variable, learning_rate)
        return step(self, gradient, variable, learning_rate, {} if shared is None else shared)

    optimizer.update_step = types.MethodType(update_step, optimizer)
    optimizer._backend_update_step = types.MethodType(update_all, optimizer)
    return optimizer


def _fusable(gradient, variable) -> bool:
    import tensorflow as tf

    return not isinstance(gradient, tf.IndexedSlices) and hasattr(variable, "handle")


def _adam_step(self, gradient, variable, learning_rate, shared: dict) -> None:
    # AdamW's decoupled weight decay is applied by Keras before update_step, as without fusing.
    import tensorflow as tf

    dtype = variable.dtype
    if dtype not in shared:
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        shared[dtype] = {
            "beta1_power": tf.pow(beta_1, step),
            "beta2_power": tf.pow(beta_2, step),
            "lr": tf.cast(learning_rate, dtype),
            "beta1": beta_1,
            "beta2": beta_2,
            "epsilon": tf.cast(self.epsilon, dtype),
        }
    index = self._get_variable_index(variable)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle,
        m=self._momentums[index].handle,
        v=self._velocities[index].handle,
        grad=tf.cast(gradient, dtype),
        **shared[dtype],
    )


def _momentum_step(self, gradient, variable, learning_rate, shared: dict) -> None:
    # accum = momentum * accum - lr * g; var += accum (Nesterov: var += momentum * accum - lr * g),
    # exactly Keras's SGD update.
    import tensorflow as tf

    dtype = variable.dtype
    if dtype not in shared:
        shared[dtype] = {"lr": tf.cast(learning_rate, dtype), "momentum": tf.cast(self.momentum, dtype)}
    tf.raw_ops.ResourceApplyKerasMomentum(
        var=variable.handle,
        accum=self.momentums[self._get_variable_index(variable)].handle,
        grad=tf.cast(gradient, dtype),
        use_nesterov=self.nesterov,
        **shared[dtype],
    )
