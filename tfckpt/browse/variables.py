"""A checkpoint's variables under the names users know (a layer's
`dense/kernel`, an `objects=` name, the optimizer's slots under the variable
they belong to), and how far two checkpoints moved, layer by layer."""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfckpt.browse.display import human_size
from tfckpt.errors import DamagedCheckpointError
from tfckpt.store import tf_checkpoint

_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"


@dataclasses.dataclass(frozen=True)
class SavedVariable:
    """One variable of a checkpoint.

    Attributes:
        name: the name users know: a Keras variable's path (`"dense/kernel"`),
            an `objects=` name (`"step"`), or the optimizer's own variable
            (`"adam/iteration"`); for a slot, its slot name (`"adam/momentum"`).
        key: TF's checkpoint key (what `tf.train.load_checkpoint` reads).
        shape: the tensor's shape.
        dtype: its dtype's name.
        nbytes: its size in bytes.
        slot_of: for an optimizer slot, the `name` of the variable it belongs to.
    """

    name: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    slot_of: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shape": list(self.shape)}


def saved_variables(path: str) -> list[SavedVariable]:
    """The variables of the checkpoint at `path` (a prefix): the weights,
    each followed by its optimizer slots, then the rest (optimizer steps,
    counters, `objects=` variables)."""
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    saved = tf_checkpoint.saved_names(path)
    # The object graph's order (the order objects were tracked), then any
    # key it does not name.
    keys = [k for k in saved if k in shapes]
    keys += sorted(k for k in shapes if k not in saved and k != _GRAPH)
    raw = {key: _name(key, saved.get(key, ("", None))[0]) for key in keys}
    group = {key: _group(saved.get(key, ("", None))[1]) for key in keys}
    names = {}
    for key in keys:
        if not group[key] or raw[key].split("/")[0] == group[key]:
            names[key] = raw[key]
        else:  # another object's variable (objects=, a root's child): say whose
            names[key] = f"{group[key]}: {raw[key]}"

    def info(key: str, name: str, slot_of: str | None = None) -> SavedVariable:
        dtype = dtypes[key]
        shape = tuple(int(d) for d in shapes[key])
        size = math.prod(shape) * (dtype.size if dtype != tf.string else 0)
        return SavedVariable(name, key, shape, dtype.name, size, slot_of)

    optimizers = {key for key in keys if _in_optimizer(key)}
    # Weights by the prefix Keras gives their slots, per holding object.
    owners: dict[str, dict[str, str]] = {}
    for key in keys:
        if "/" in raw[key] and key not in optimizers:
            owners.setdefault(group[key], {}).setdefault(_slot_prefix(raw[key]), names[key])
    weights, rest, slots = [], [], {}
    for key in keys:
        owner, slot = None, ""
        if key in optimizers:  # a slot of the same object's weight, else of any
            for candidates in [owners.get(group[key], {}), *owners.values()]:
                owner, slot = _owner(raw[key], candidates)
                if owner is not None:
                    break
        if owner is not None:
            slots.setdefault(owner, []).append(info(key, slot, owner))
        elif "/" in names[key] and key not in optimizers:
            weights.append(info(key, names[key]))
        else:
            rest.append(info(key, names[key]))
    ordered = []
    for v in weights:
        ordered += [v, *slots.pop(v.name, [])]
    for leftover in slots.values():
        ordered += leftover
    return ordered + rest


def _in_optimizer(key: str) -> bool:
    """Whether `key` is a Keras optimizer's own variable (its `_variables`
    list: slots, EMA copies; its step and learning rate)."""
    parts = key.split("/")
    return "_variables" in parts or parts[-3:-2] in (["_iterations"], ["_learning_rate"])


def _name(key: str, saved_name: str) -> str:
    """A Keras variable's path where TF recorded one; else the checkpoint key
    (an `objects=` variable: `step`; the save counter)."""
    path = key.removesuffix(_VALUE)
    saved_name = saved_name.split(":", 1)[0]
    if "/" in saved_name:
        return saved_name
    return path


def _group(holder: str | None) -> str:
    """The object a variable is shown under: none for the model and its
    optimizer (the checkpoint's main subject), else its name."""
    return "" if holder in (None, "model", "optimizer") else holder


def _slot_prefix(name: str) -> str:
    # Keras names a slot `<optimizer>/<variable path, / -> _>_<slot>`.
    return name.replace("/", "_") + "_"


def _owner(name: str, owners: dict[str, str]) -> tuple[str | None, str]:
    """The variable whose optimizer slot `name` is, and the slot's name."""
    optimizer, _, rest = name.partition("/")
    if not rest:
        return None, name
    best = max((p for p in owners if rest.startswith(p)), key=len, default=None)
    if best is None:
        return None, name
    return owners[best], f"{optimizer}/{rest[len(best) :]}"


@dataclasses.dataclass(frozen=True)
class LayerChange:
    """How far one layer (the variables under one path) moved.

    Attributes:
        layer: the layer's path (`"dense"`), or a variable's name.
        params: number of values.
        norm: L2 norm of the layer's values in the first checkpoint.
        change: L2 norm of the difference (second minus first).
        relative: `change / norm` (`None` where `norm` is 0).
        note: `"only in A"`, `"only in B"`, `"shape changed"`, or `""`.
    """

    layer: str
    params: int
    norm: float
    change: float
    relative: float | None
    note: str = ""


class CheckpointDiff(Sequence[LayerChange]):
    """Per layer, how far checkpoint `b` moved from checkpoint `a` (a list of
    `LayerChange`; a table in notebooks, `.plot()` for a bar plot)."""

    def __init__(self, a: str, b: str, rows: list[LayerChange]):
        self.a, self.b, self._rows = a, b, rows

    def __getitem__(self, i: Any) -> Any:
        return self._rows[i]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[LayerChange]:
        return iter(self._rows)

    def _cells(self) -> list[list[str]]:
        return [
            [
                r.layer,
                str(r.params),
                f"{r.norm:.4g}",
                f"{r.change:.4g}",
                "" if r.relative is None else f"{r.relative:.3%}",
                r.note,
            ]
            for r in self._rows
        ]

    _HEADER = ["layer", "params", "norm (A)", "|B - A|", "relative", ""]

    def __repr__(self) -> str:
        return "\n".join([f"{self.a} -> {self.b}", *_aligned([self._HEADER, *self._cells()])])

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._HEADER)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self._cells()
        )
        caption = html.escape(f"{self.a} -> {self.b}")
        return f"<table><caption>{caption}</caption><tr>{head}</tr>{body}</table>"

    def plot(self, ax: Any = None, *, relative: bool = True) -> Any:
        """A horizontal bar per layer: the relative change (or, with
        `relative=False`, the norm of the difference). Needs matplotlib."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                'CheckpointDiff.plot needs matplotlib: pip install "tfckpt[plot]"'
            ) from e
        rows = [r for r in self._rows if not r.note]
        values = [(r.relative or 0.0) if relative else r.change for r in rows]
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 0.3 * len(rows) + 1))
        ax.barh([r.layer for r in rows], values)
        ax.invert_yaxis()
        ax.set_xlabel("|B - A| / |A|" if relative else "|B - A|")
        ax.set_title(f"{self.a} -> {self.b}")
        return ax


def diff(a_path: str, b_path: str, a_name: str, b_name: str) -> CheckpointDiff:
    """How far the model's variables moved from checkpoint `a_path` to
    `b_path`, per layer (optimizer slots and counters left out)."""
    a_vars = _weights(a_path)
    b_vars = _weights(b_path)
    layers: dict[str, list[str]] = {}
    for name in [*a_vars, *(n for n in b_vars if n not in a_vars)]:
        layers.setdefault(name.rsplit("/", 1)[0] if "/" in name else name, []).append(name)
    a_reader, b_reader = _reader(a_path, a_name), _reader(b_path, b_name)
    rows = []
    for layer, names in layers.items():
        params, norm, change, note = 0, 0.0, 0.0, ""
        for name in names:
            va, vb = a_vars.get(name), b_vars.get(name)
            if va is None or vb is None:
                note = "only in B" if va is None else "only in A"
                params += math.prod((va or vb).shape)
                continue
            if va.shape != vb.shape:
                note = "shape changed"
                continue
            x = _tensor(a_reader, va.key, a_name)
            y = _tensor(b_reader, vb.key, b_name)
            params += x.size
            norm += float(np.sum(np.square(x)))
            change += float(np.sum(np.square(y - x)))
        norm, change = math.sqrt(norm), math.sqrt(change)
        relative = change / norm if norm > 0 and not note else None
        rows.append(LayerChange(layer, params, norm, change, relative, note))
    return CheckpointDiff(a_name, b_name, rows)


def _weights(path: str) -> dict[str, SavedVariable]:
    return {
        v.name: v
        for v in saved_variables(path)
        if v.slot_of is None
        and "/" in v.name
        and not _in_optimizer(v.key)
        and tf.as_dtype(v.dtype).is_floating
    }


def _reader(path: str, name: str) -> Any:
    try:
        return tf.train.load_checkpoint(path)
    except tf.errors.DataLossError as e:
        raise DamagedCheckpointError(f"Checkpoint {name} is damaged: {e.message}") from None


def _tensor(reader: Any, key: str, name: str) -> np.ndarray:
    try:
        return np.asarray(reader.get_tensor(key), dtype=np.float64)
    except tf.errors.DataLossError as e:
        raise DamagedCheckpointError(f"Checkpoint {name} is damaged ({key}): {e.message}") from None


def format_variables(variables: list[SavedVariable]) -> list[str]:
    """`tfckpt info`'s lines: name, dtype, shape, size; slots indented under
    their variable."""
    rows = [
        ["  " * (v.slot_of is not None) + v.name, v.dtype, str(list(v.shape)), human_size(v.nbytes)]
        for v in variables
    ]
    return ["  " + line for line in _aligned(rows)]


def _aligned(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines, each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
