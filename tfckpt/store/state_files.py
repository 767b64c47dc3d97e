"""The saver's own state stored beside the TF checkpoint: JSON for everything,
with NumPy arrays (e.g. EarlyStopping's best weights) in a `.npz` beside it."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from tfckpt.store import fs
from tfckpt.store.layout import CheckpointRecord, jsonable

STATE = "state.json"
ARRAYS = "state-arrays.npz"
_REF = "__ndarray__"


def encode(state: dict[str, Any]) -> dict[str, bytes]:
    """Files (name -> bytes) holding `state`."""
    arrays: dict[str, np.ndarray] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {_REF: key}
        if isinstance(value, dict):
            return {str(k): walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        return jsonable(value)

    files = {STATE: json.dumps(walk(state), sort_keys=True).encode()}
    if arrays:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        files[ARRAYS] = buffer.getvalue()
    return files


def decode(state_bytes: bytes, arrays_bytes: bytes | None) -> dict[str, Any]:
    arrays = np.load(io.BytesIO(arrays_bytes)) if arrays_bytes else {}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_REF}:
                return np.array(arrays[value[_REF]])
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(json.loads(state_bytes))


def read(record: CheckpointRecord) -> dict[str, Any]:
    """The state stored with `record` (`{}` when it holds none)."""
    files = record.manifest["files"]
    if STATE not in files:
        return {}
    arrays = None
    if ARRAYS in files:
        arrays = fs.read_bytes(fs.join(record.directory, ARRAYS))
    return decode(fs.read_bytes(fs.join(record.directory, STATE)), arrays)
