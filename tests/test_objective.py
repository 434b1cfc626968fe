"""What a trial runs TensorFlow with: the training step traced as one function and run without Grappler,
validation with it."""
from __future__ import annotations

import math

import numpy as np
import pytest
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context
from tensorflow.python.framework import func_graph

import search.objective
from search.data import load_fer2013
from search.objective import Objective
from search.space import load_space


def test_training_step_runs_without_grappler_and_validation_with_it(small_cnn, fer_slice, monkeypatch):
    calls: list[tuple[str, bool]] = []  # (function name, Grappler's meta-optimizer off)
    call_function = context.Context.call_function

    def spy(self, name, tensor_inputs, num_outputs):
        config = config_pb2.ConfigProto.FromString(self.function_call_options.config_proto_serialized)
        calls.append((name.decode(), config.graph_options.rewrite_options.disable_meta_optimizer))
        return call_function(self, name, tensor_inputs, num_outputs)

    space = load_space(small_cnn).with_settings(epochs=2, min_epochs=1).with_fixed({"batch_size": 32})
    objective = Objective(load_fer2013(fer_slice), space, log=None)
    before = context.context().function_call_options.config_proto_serialized
    monkeypatch.setattr(context.Context, "call_function", spy)
    result = objective(space.defaults())
    monkeypatch.undo()
    training = [off for name, off in calls if "training_step_on_iterator" in name]
    validation = [off for name, off in calls if "lambda" in name]  # _BestEpoch's forward pass
    assert len(training) == 2 * math.ceil(result.metrics["train_images"] / 32)  # every step, both epochs
    assert all(training)
    assert len(validation) == 2 * math.ceil(len(objective.data.val) / 256)  # every batch of both passes
    assert not any(validation)
    # and the thread's options are what they were before the trial
    assert context.context().function_call_options.config_proto_serialized == before
    assert 0 <= result.value <= 1


def test_without_grappler_restores_the_options_when_the_block_fails():
    from search.objective import _function_call_options, _without_grappler

    before = _function_call_options()
    with pytest.raises(RuntimeError), _without_grappler():
        assert _function_call_options() is not before
        raise RuntimeError("a trial that fails")
    assert _function_call_options() is before


def _traced_graphs(monkeypatch) -> list[str]:
    """The names of the function graphs TensorFlow traces from now on (the list fills as they are made)."""
    names: list[str] = []
    init = func_graph.FuncGraph.__init__

    def spy(self, name, *args, **kwargs):
        names.append(str(name))
        init(self, name, *args, **kwargs)

    monkeypatch.setattr(func_graph.FuncGraph, "__init__", spy)
    return names


def test_a_trial_traces_its_training_step_as_one_function_and_trains_as_keras_does(small_cnn, fer_slice,
                                                                                    monkeypatch):
    space = load_space(small_cnn).with_settings(epochs=2, min_epochs=1).with_fixed({"batch_size": 32})
    objective = Objective(load_fer2013(fer_slice), space, log=None)
    traced = _traced_graphs(monkeypatch)
    ours = objective(space.defaults())
    one_function = list(traced)
    traced.clear()
    monkeypatch.setattr(search.objective, "_train_in_one_function", lambda model: None)  # Keras's two functions
    keras_own = objective(space.defaults())
    monkeypatch.undo()

    def steps(names):
        return [name for name in names if "step" in name]

    assert steps(one_function) == ["training_step_on_iterator"]  # traced once, for both epochs
    assert sorted(steps(traced)) == ["multi_step_on_iterator", "one_step_on_data"]
    # the same operations, so the same training: curve and weights
    for ours_row, keras_row in zip(ours.history, keras_own.history, strict=True):
        assert ours_row["loss"] == pytest.approx(keras_row["loss"], rel=1e-5)
        assert ours_row["val_accuracy"] == keras_row["val_accuracy"]
    for a, b in zip(ours.model.get_weights(), keras_own.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Your input ran out of data")  # how Keras ends an epoch of unknown length
def test_the_one_function_step_leaves_keras_its_own_where_it_needs_it(monkeypatch):
    import keras
    import tensorflow as tf

    from search.objective import _train_in_one_function

    def model(**compile_kwargs):
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        m.compile(optimizer="sgd", loss="mse", **compile_kwargs)
        return m

    for kwargs in ({"jit_compile": True}, {"steps_per_execution": 2}, {"run_eagerly": True}):
        m = model(**kwargs)
        _train_in_one_function(m)
        assert m.train_function.__name__ != "train_function", kwargs  # Keras's, untouched
    m = model()
    _train_in_one_function(m)
    assert m.train_function.__name__ == "train_function"
    # input that is not a tf.data iterator (train_on_batch's) goes to Keras's function, and trains
    before = m.get_weights()[0].copy()
    loss = m.train_on_batch(np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"))
    assert np.isfinite(loss) and not np.array_equal(m.get_weights()[0], before)
    # fit reads a tf.data iterator: the one function, which trains as Keras's does, even over epochs of unknown length
    keras_own = model()
    keras_own.set_weights(m.get_weights())
    batches = tf.data.Dataset.from_tensors((np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"))).repeat(3)
    unknown_length = batches.filter(lambda x, y: True)
    traced = _traced_graphs(monkeypatch)
    history = m.fit(unknown_length, epochs=2, shuffle=False, verbose=0)
    assert [name for name in traced if "step" in name] == ["training_step_on_iterator"]
    keras_history = keras_own.fit(unknown_length, epochs=2, shuffle=False, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    np.testing.assert_allclose(history.history["loss"], keras_history.history["loss"], rtol=1e-6)
    assert int(m.optimizer.iterations) - 1 == int(keras_own.optimizer.iterations) > 0  # less train_on_batch's step
    for ours, theirs in zip(m.get_weights(), keras_own.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
