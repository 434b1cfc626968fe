"""What a trial runs TensorFlow with: the training step without Grappler, validation with it."""
from __future__ import annotations

import math

import pytest
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context

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
    training = [off for name, off in calls if "multi_step_on_iterator" in name]
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
