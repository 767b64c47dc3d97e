"""Every random-number state a training step or a data pipeline draws from:
Keras's seed generators (each layer's, a model's own, Keras's global one) and
NumPy's and Python's global generators. Saved with each checkpoint (as JSON
in its state) so that a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

try:  # Keras's generator for unseeded random ops (no public accessor)
    from keras.src.random.seed_generator import global_seed_generator
except ImportError:  # pragma: no cover - other Keras layouts
    global_seed_generator = None


def plain(value: Any) -> Any:
    """`value` with NumPy scalars (also inside lists) as Python numbers, for JSON."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _seed_generators(model: Any) -> list[Any]:
    if not hasattr(model, "_flatten_layers"):
        return []  # not a Keras layer (e.g. a tf.Module)
    generators = []
    for layer in model._flatten_layers(include_self=True):
        generators.extend(getattr(layer, "_seed_generators", []) or [])
    return generators


def host_random_state() -> dict[str, Any]:
    """NumPy's and Python's global generators (data pipelines draw from them)."""
    return {
        "numpy": plain(list(np.random.get_state(legacy=True))),
        "python": plain(list(random.getstate())),
    }


def random_state(model: Any, host: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every random-number state a training step or a data pipeline may draw
    from; `host` replaces the current NumPy/Python states."""
    state: dict[str, Any] = {
        "layers": [np.asarray(g.state.numpy()).tolist() for g in _seed_generators(model)],
        **(host or host_random_state()),
    }
    if global_seed_generator is not None:
        state["keras_global"] = np.asarray(global_seed_generator().state.numpy()).tolist()
    return state


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def set_random_state(model: Any, state: dict[str, Any]) -> None:
    generators = _seed_generators(model)
    saved = state.get("layers", [])
    if len(saved) != len(generators):
        raise ValueError(
            f"The checkpoint holds {len(saved)} layer random states, the model has "
            f"{len(generators)} seed generators: not the model that was saved."
        )
    for generator, value in zip(generators, saved):
        generator.state.assign(np.asarray(value, dtype=generator.state.dtype))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(_tuples(state["python"]))
    if global_seed_generator is not None and "keras_global" in state:
        g = global_seed_generator()
        g.state.assign(np.asarray(state["keras_global"], dtype=g.state.dtype))
