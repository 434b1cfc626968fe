from __future__ import annotations

from search.records import edge_warnings
from search.space import load_space


def test_edge_warnings_flag_values_on_the_edge_of_their_range():
    space = load_space("baseline_cnn")
    config = space.defaults() | {"dropout": 0.45, "learning_rate": 1.0e-4, "base_filters": 32, "zoom": 0.0}
    notes = edge_warnings(space, config)
    assert "dropout = 0.45 sits at the high edge of [0.15, 0.45]; widen the range" in notes
    assert any(n.startswith("learning_rate = 0.0001 sits at the low edge of [0.0001, 0.003]") for n in notes)
    assert any(n.startswith("base_filters = 32 is the largest of its choices") for n in notes)
    assert not any(n.startswith(("zoom", "shift", "rotation", "dense_dropout")) for n in notes)
    assert not any(n.startswith("dense_units") for n in edge_warnings(space, space.defaults()))  # 512: the middle
