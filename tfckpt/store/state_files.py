"""The saver's own state stored beside the TF checkpoint: JSON for everything,
with NumPy arrays (e.g. EarlyStopping's best weights) in a `.npz` beside it."""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any

import numpy as np

from tfckpt.errors import DamagedCheckpointError
from tfckpt.store import fs
from tfckpt.store.layout import CheckpointRecord, jsonable

STATE = "state.json"
ARRAYS = "state-arrays.npz"
_REF = "__ndarray__"
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


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
    """The state `encode` wrote; a `ValueError` for anything else (the files
    of a run directory from someone else are untrusted input)."""
    arrays = _load_arrays(arrays_bytes) if arrays_bytes else {}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_REF}:
                return arrays[value[_REF]]
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    try:
        state = walk(fs.parse_json(state_bytes))
    except (KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"malformed {STATE} ({e!r})") from None
    _check_shape(state)
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_shape(state: Any) -> None:
    """A `ValueError` unless `state` has the shape tfckpt's writers give the
    keys every reader uses: a dict whose `history` is a list of per-epoch
    dicts with an integer `epoch`, and whose `batches` is an integer."""
    if not isinstance(state, dict):
        raise ValueError(f"{STATE} holds a {type(state).__name__}, not an object")
    history = state.get("history", [])
    if not isinstance(history, list) or not all(
        isinstance(e, dict) and _is_int(e.get("epoch")) for e in history
    ):
        raise ValueError(f"{STATE}: 'history' is not a list of epochs, each with its number")
    if not _is_int(state.get("batches", 0)):
        raise ValueError(f"{STATE}: 'batches' is not an integer")


def _load_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a `.npz` written by `encode`, never more memory than the
    file's own size: `np.savez` stores its members uncompressed, so a
    compressed member (a decompression bomb) or an array header declaring
    more bytes than its member holds is refused, not read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
                    raise ValueError(f"{ARRAYS}: {info.filename} is not an array np.savez stores")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in _HEADER_READERS:
                        raise ValueError(f"{ARRAYS}: {info.filename} is no .npy of version 1 or 2")
                    shape, _, dtype = _HEADER_READERS[version](member)
                    if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
                        raise ValueError(f"{ARRAYS}: {info.filename} declares more than it holds")
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                return {key: np.array(arrays[key]) for key in arrays.files}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{ARRAYS} is not a NumPy archive ({e})") from None


def read(record: CheckpointRecord) -> dict[str, Any]:
    """The state stored with `record` (`{}` when it holds none); a
    `DamagedCheckpointError` when its files are not what tfckpt wrote."""
    files = record.manifest["files"]
    if STATE not in files:
        return {}

    def read_file(name: str) -> bytes:
        # At most the size the manifest records: the manifest was checked.
        return fs.read_bytes(fs.join(record.directory, name), int(files[name]["size"]))

    try:
        arrays = read_file(ARRAYS) if ARRAYS in files else None
        return decode(read_file(STATE), arrays)
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpointError(
            f"The state files of checkpoint {record.name} in {record.directory!r} are "
            f"damaged or not tfckpt's: {e}"
        ) from None
