"""What goes into a checkpoint, and restoring it with the checks TF leaves to us.

Serialization is `tf.train.Checkpoint(model=..., optimizer=...)`, so every
checkpoint stays readable by plain TensorFlow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfckpt.errors import IncompatibleCheckpointError
from tfckpt.store import gc_pause

# How TF says that a checkpoint's bytes are not the ones written: a tensor's
# CRC32C ("Checksum does not match"), the CRC of a record's length ("The length
# checksum does not match", a flipped byte among a shard's first bytes), or a
# malformed bundle. An I/O error says none of these.
_DAMAGE = re.compile(r"checksum does not match|TensorBundle", re.IGNORECASE)


def is_damage(e: BaseException) -> bool:
    """Whether an error reading a checkpoint through TF means damaged bytes
    (skip the checkpoint) rather than a failed read (try again)."""
    text = getattr(e, "message", None) or str(e)
    return isinstance(e, tf.errors.DataLossError) or bool(_DAMAGE.search(text))


def _is_built(model: Any) -> bool:
    return bool(getattr(model, "built", True) or getattr(model, "weights", None))


def build_config(model: Any) -> dict | None:
    """What `ensure_built` needs to build an unbuilt twin of `model`."""
    try:
        return model.get_build_config() if _is_built(model) else None
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None


def ensure_built(model: Any, config: dict | None) -> None:
    """Builds `model` from the saved build config when it is not built yet.

    Without a strategy, Keras builds a model only when the train function is
    first traced, i.e. after `on_train_begin`; restoring into an unbuilt model
    would silently skip every variable, so build it here or fail clearly.
    """
    if _is_built(model):
        return
    if config:
        try:
            if not _call_on_zeros(model, config.get("input_shape")):
                model.build_from_config(config)
        except Exception as e:
            raise ValueError(
                f"Model {getattr(model, 'name', model)!r} is not built and could not "
                f"be built from the checkpoint's build config {config}: {e}. Build it "
                "first: call it on a batch of data, or `model.build(input_shape)`."
            ) from e
        if _is_built(model):
            return
    raise ValueError(
        f"Model {getattr(model, 'name', model)!r} is not built, so its "
        "variables do not exist yet and restoring would silently skip them. "
        "Build it first: call it on a batch of data, or `model.build(input_shape)`."
    )


def _call_on_zeros(model: Any, input_shape: Any) -> bool:
    """Builds a subclassed model by calling it (in inference mode) on zeros
    of its saved input shape, as its first real call would: its variables
    get their paths under the model's name (`mlp/dense/kernel`) and
    `model.built` is set, which `build_from_config` leaves undone."""
    if isinstance(model, keras.Sequential) or not isinstance(model, keras.Model):
        return False

    def zeros(shape: Any) -> Any:
        if isinstance(shape, dict):
            return {k: zeros(v) for k, v in shape.items()}
        if isinstance(shape, (list, tuple)) and all(d is None or isinstance(d, int) for d in shape):
            return np.zeros([1 if d is None else d for d in shape], "float32")
        if isinstance(shape, (list, tuple)):
            return [zeros(s) for s in shape]
        raise TypeError(f"not an input shape: {shape!r}")

    try:
        model(zeros(input_shape), training=False)
    except Exception:  # inputs zeros do not fit (strings, ...): Keras's own build
        return _is_built(model)
    return True


def build_optimizers(prefix: str, objects: Mapping[str, Any] | tf.train.Checkpoint) -> None:
    """Builds each unbuilt Keras optimizer among `objects` (the compiled one,
    and those a model holds as attributes: a GAN's two) that the checkpoint
    at `prefix` holds built, with the variables it was built for, so that
    its slots are restored and checked like every other value.

    The checkpoint records them: a built optimizer's `_trainable_variables`
    refer to the model's variables in TF's object graph. An optimizer that
    was not built when saved (e.g. the unused one `compile()` creates in a
    custom `train_step` model) is left unbuilt.
    """
    graph = _object_graph(prefix)
    if graph is None:
        return
    found = _match(graph, checkpoint_for(objects))
    for node_id, obj in found.items():
        if not isinstance(obj, keras.optimizers.Optimizer) or obj.built:
            continue
        built_for = _child(graph, node_id, "_trainable_variables")
        if built_for is None:
            continue
        refs = sorted(graph.nodes[built_for].children, key=lambda ref: _index(ref.local_name))
        variables = [found.get(ref.node_id) for ref in refs]
        if variables and all(v is not None for v in variables):
            obj.build(variables)


def _object_graph(prefix: str) -> Any:
    """TF's object graph stored in the checkpoint (`None` if it has none)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    try:
        data = tf.train.load_checkpoint(prefix).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    except (tf.errors.OpError, ValueError):
        return None  # unreadable: the read that follows says how
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(data)
    return graph


def saved_names(prefix: str) -> dict[str, tuple[str, str | None]]:
    """Checkpoint key -> the name the variable had when it was saved (a Keras
    variable's path, e.g. `"dense/kernel"` or `"adam/dense_kernel_momentum"`;
    TF's name for a plain `tf.Variable`), and the object of the checkpoint
    that holds it (`"model"`, an `objects=` name; an optimizer only where
    nothing else holds the variable), from the checkpoint's object graph."""
    graph = _object_graph(prefix)
    if graph is None:
        return {}
    roots = list(graph.nodes[0].children)
    # Optimizers last: a model's weights are also in its optimizer's lists.
    roots.sort(key=lambda ref: _child(graph, ref.node_id, "_iterations") is not None)
    holder: dict[int, str] = {}
    for ref in roots:
        pending, seen = [ref.node_id], {ref.node_id}
        while pending:
            node_id = pending.pop()
            holder.setdefault(node_id, ref.local_name)
            for child in graph.nodes[node_id].children:
                if child.node_id not in seen and child.node_id < len(graph.nodes):
                    seen.add(child.node_id)
                    pending.append(child.node_id)
    return {
        attribute.checkpoint_key: (attribute.full_name, holder.get(node_id))
        for node_id, node in enumerate(graph.nodes)
        for attribute in node.attributes
    }


def _match(graph: Any, root: Any) -> dict[int, Any]:
    """Node id of the checkpoint's object graph -> the Python object at the
    same path from `root` (as TF matches them when it restores)."""
    found = {0: root}
    pending = [0]
    while pending:
        node_id = pending.pop()
        children_of = getattr(found[node_id], "_trackable_children", None)
        if children_of is None:
            continue
        children = children_of(save_type="checkpoint")
        for ref in graph.nodes[node_id].children:
            child = children.get(ref.local_name)
            if child is not None and ref.node_id not in found:
                found[ref.node_id] = child
                pending.append(ref.node_id)
    return found


def _child(graph: Any, node_id: int, name: str) -> int | None:
    return next(
        (ref.node_id for ref in graph.nodes[node_id].children if ref.local_name == name), None
    )


def _index(name: str) -> int:
    return int(name) if name.isdigit() else -1


# TF's async writer always adds the Checkpoint's `save_counter`; sync writes
# create it too, so both modes write the same objects.
SAVE_COUNTER = "save_counter"


def checkpoint_for(objects: Mapping[str, Any] | tf.train.Checkpoint) -> tf.train.Checkpoint:
    """The `tf.train.Checkpoint` that saves `objects` (name -> trackable); a
    caller's own `tf.train.Checkpoint` is saved as it is (its children and
    its `save_counter`)."""
    if isinstance(objects, tf.train.Checkpoint):
        checkpoint = objects
    else:
        checkpoint = tf.train.Checkpoint(**{k: v for k, v in objects.items() if v is not None})
    checkpoint.save_counter  # noqa: B018 - the property creates the variable
    return checkpoint


_VALUE_FIELD = re.compile(r",?\s*\b(numpy|value)=")


def without_values(text: str) -> str:
    """`text` (TF's description of unmatched objects) with every tensor value
    (`numpy=...`, `value=...` in a variable's repr) cut out: a message names
    what did not match, it does not print weights."""
    out, i = [], 0
    while (m := _VALUE_FIELD.search(text, i)) is not None:
        out.append(text[i : m.start()])
        depth, j = 0, m.end()
        while j < len(text):  # to the end of the value: `>` or `,` at depth 0
            c = text[j]
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif depth <= 0 and c in ">,":
                break
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def read(
    prefix: str,
    objects: Mapping[str, Any] | tf.train.Checkpoint,
    *,
    saved: list[str] | None = None,
    strict: bool = True,
) -> None:
    """Restores `objects` (name -> trackable) from `prefix`.

    `saved` names the objects the checkpoint holds; objects it does not hold are
    left alone. `strict` requires every value of the restored objects to match
    (a different architecture fails, naming what did not match); otherwise only
    the objects passed in must be fully restored (e.g. a model restored for
    inference from a checkpoint that also holds an optimizer).

    A caller's own `tf.train.Checkpoint` is read as `checkpoint.restore`
    reads it: what exists must match, and values of objects not created yet
    are restored when they are (TF's deferred restoration).
    """
    own = isinstance(objects, tf.train.Checkpoint)
    if own:
        wanted, strict = {}, False
    else:
        wanted = {
            k: v for k, v in objects.items() if v is not None and (saved is None or k in saved)
        }
    # TF reports an I/O error on some reads (the object graph) as objects that
    # were not restored: a mismatch is only believed when a second read agrees.
    for attempt in (1, 2):
        checkpoint = objects if own else tf.train.Checkpoint(**wanted)
        matched = dict(wanted)
        if saved is not None and SAVE_COUNTER in saved and not own:
            matched[SAVE_COUNTER] = checkpoint.save_counter  # created, to be matched too
        try:
            with gc_pause.paused():  # TF's per-variable objects, as in a save
                status = checkpoint.read(prefix)
        except (ValueError, tf.errors.InvalidArgumentError) as e:
            raise IncompatibleCheckpointError(
                f"Checkpoint {prefix!r} does not match the model: {without_values(str(e))}"
            ) from None
        try:
            if strict and (saved is None or set(matched) == set(saved)):
                status.assert_consumed()
            else:
                status.expect_partial()
                status.assert_existing_objects_matched()
            return
        except AssertionError as e:
            if attempt == 2:
                raise IncompatibleCheckpointError(
                    f"Checkpoint {prefix!r} does not match the model being restored "
                    f"(different architecture?): {without_values(str(e))}"
                ) from None


def optimizer_step(optimizer: Any) -> int:
    """The optimizer's iteration count (also for a mirrored variable, which
    `int()` does not take)."""
    return int(np.asarray(keras.ops.convert_to_numpy(optimizer.iterations)))


def optimizers(model: Any) -> list[Any]:
    """The distinct Keras optimizers `model` tracks (its compiled one and
    those it holds as attributes, e.g. a GAN's), outermost first."""
    found: list[Any] = []
    seen = {id(model)}
    pending = [model]
    while pending:
        obj = pending.pop(0)
        if isinstance(obj, keras.optimizers.Optimizer):
            if not any(obj is o for o in found):
                found.append(obj)
            continue  # a LossScaleOptimizer's inner one is part of it
        children_of = getattr(obj, "_trackable_children", None)
        if children_of is None:
            continue
        for child in children_of(save_type="checkpoint").values():
            if id(child) not in seen and not isinstance(child, tf.Variable):
                seen.add(id(child))
                pending.append(child)
    return found


def phase(model: Any, optimizer: Any) -> dict[str, Any]:
    """What a checkpoint's optimizer state fits: the optimizers' classes and
    the trainable variables (their shapes and dtypes in order; not their
    names, which Keras numbers anew for each model built in a process). A
    second training phase (layers unfrozen, another optimizer) has another."""
    import hashlib

    held = [o for o in [optimizer, *optimizers(model)] if o is not None]
    classes = sorted({type(o).__name__ for o in held})
    trainable = model.trainable_variables if model is not None else []
    shapes = [f"{tuple(v.shape)}:{v.dtype}" for v in trainable]
    return {
        "optimizers": classes,
        "trainable": len(shapes),
        "trainable_hash": hashlib.sha256("\n".join(shapes).encode()).hexdigest()[:16],
    }


def phase_change(saved: Any, now: Mapping[str, Any]) -> str | None:
    """How the training phase `now` differs from the one a checkpoint was
    saved in (`saved`, its manifest's `phase`); `None`: the same, or not
    recorded (a checkpoint of an older tfckpt)."""
    if not isinstance(saved, Mapping):
        return None
    if saved.get("optimizers") != now["optimizers"]:
        return (
            f"the optimizer changed: {', '.join(saved.get('optimizers') or ['none'])} then, "
            f"{', '.join(now['optimizers']) or 'none'} now"
        )
    if saved.get("trainable_hash") != now["trainable_hash"]:
        return (
            f"the trainable variables changed: {saved.get('trainable')} then, "
            f"{now['trainable']} now"
        )
    return None


def variables(model: Any, optimizer: Any, objects: Mapping[str, Any] | None = None) -> list[Any]:
    """The variables a save of `model`, `optimizer` and `objects` writes
    (the optimizers the model holds as attributes included)."""
    found = list(model.weights) if model is not None else []
    for extra in [optimizer, *optimizers(model)]:
        if extra is not None:
            found += list(extra.variables)
    for obj in (objects or {}).values():
        if isinstance(obj, (tf.Variable, keras.Variable)):
            found.append(obj)
        else:
            found += list(getattr(obj, "variables", None) or [])
    unique, seen = [], set()
    for v in found:
        if id(v) not in seen:
            seen.add(id(v))
            unique.append(v)
    return unique


def state_bytes(variables: Sequence[Any]) -> int:
    """Bytes of `variables` (for the free-space check before a save)."""
    sizes: dict[Any, int] = {}  # itemsize by dtype: one lookup per dtype, not per variable
    total = 0
    for v in variables:
        dtype = v.dtype
        if dtype not in sizes:
            sizes[dtype] = np.dtype(getattr(dtype, "name", dtype)).itemsize
        total += math.prod(v.shape) * sizes[dtype]
    return total


def read_model(model: Any, path: str, manifest: Mapping[str, Any]) -> None:
    """Reads a checkpoint's model weights into `model` (built first from the
    manifest's build config), ignoring what `model` has no place for and its
    compiled optimizer (which may be built where the saved one was not)."""
    ensure_built(model, manifest.get("build_config"))
    read(path, {"model": model_only(model)}, saved=manifest.get("contents"), strict=False)


def model_only(model: Any) -> Any:
    """`model`'s checkpoint children without its compiled optimizer.

    A Keras model tracks its optimizer, so restoring the model would also set
    the optimizer's learning rate, step and (once built) slots; restoring
    through this view reads the model's variables only.
    """
    children = getattr(model, "_trackable_children", None)
    if children is None:
        return model
    view = tf.__internal__.tracking.AutoTrackable()
    for name, child in children(save_type="checkpoint").items():
        if name != "optimizer":
            setattr(view, name, child)
    return view
