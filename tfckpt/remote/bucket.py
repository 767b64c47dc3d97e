"""A directory in a bucket, reached through fsspec (`s3://`, `gs://`,
`az://`, or any URL fsspec knows).

Credentials and endpoints come from each storage's own configuration
(`AWS_ENDPOINT_URL`, `STORAGE_EMULATOR_HOST`, ...) or `storage_options`,
which go to fsspec as they are and are never printed. A bucket may hold
someone else's run: every read is bounded, and no name read from a listing
leads outside the directory (object keys are plain names checked by the
caller; there are no links).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tfckpt.errors import CheckpointReadError

_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}


def is_remote(path: object) -> bool:
    """Whether `path` is a URL tfckpt reaches through fsspec: one with a
    scheme other than TF's own local ones (`file://`, `ram://`)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    scheme, sep, _ = os.fspath(path).partition("://")
    return bool(sep) and scheme not in ("file", "ram", "")


class Bucket:
    """The directory `url` of a bucket: listing, bounded reads, writes.

    Args:
        url: e.g. `"s3://bucket/runs/exp1"`.
        storage_options: passed to fsspec's filesystem (credentials,
            `endpoint_url`, `client_kwargs`, ...).
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.url = url.rstrip("/")
        scheme = self.url.partition("://")[0]
        try:
            import fsspec

            self.fs, root = fsspec.core.url_to_fs(self.url, **dict(storage_options or {}))
        except ImportError as e:
            extra = _EXTRAS.get(scheme)
            hint = f"pip install 'tfckpt[{extra}]'" if extra else "pip install fsspec and its"
            raise ImportError(
                f"tfckpt reaches {scheme}:// through fsspec, which is missing something "
                f"here ({e}). Install it: {hint}"
                + ("" if extra else f" filesystem for {scheme}://")
            ) from None
        except ValueError as e:
            raise ValueError(f"Cannot use {self.url!r} as a remote directory: {e}") from None
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"Bucket({self.url!r})"

    def path(self, *names: str) -> str:
        """The fsspec path of `names` inside the directory."""
        return "/".join([self.root, *names])

    def url_of(self, *names: str) -> str:
        return "/".join([self.url, *names])

    def listdir(self, *names: str) -> list[str]:
        """Names directly under `names` (none when it does not exist);
        always a fresh listing (fsspec caches listings)."""
        path = self.path(*names)
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        prefix = path.rstrip("/") + "/"
        out = []
        for entry in entries:
            entry = entry.rstrip("/")
            if entry.startswith(prefix):
                out.append(entry[len(prefix) :])
        return [e for e in out if e and "/" not in e]

    def sizes(self, *names: str) -> dict[str, int]:
        """Name -> size of the objects directly under `names` (one listing)."""
        path = self.path(*names)
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
        prefix = path.rstrip("/") + "/"
        out = {}
        for entry in entries:
            name = str(entry.get("name", "")).rstrip("/")
            if entry.get("type") == "file" and name.startswith(prefix):
                rest = name[len(prefix) :]
                if rest and "/" not in rest:
                    out[rest] = int(entry.get("size") or 0)
        return out

    def size(self, *names: str) -> int | None:
        """An object's size, or `None` when there is none."""
        path = self.path(*names)
        self.fs.invalidate_cache(path)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        return int(info["size"])

    def info(self, *names: str) -> dict[str, Any]:
        path = self.path(*names)
        self.fs.invalidate_cache(path)
        return self.fs.info(path)

    def read(self, *names: str, limit: int) -> bytes | None:
        """An object's bytes (`None` when there is none); one larger than
        `limit` is a ValueError. One ranged request, never more than
        `limit + 1` bytes read."""
        try:
            data = self.fs.cat_file(self.path(*names), start=0, end=limit + 1)
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise ValueError(f"{names[-1]} is larger than {limit} bytes")
        return data

    def write(self, *names: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(*names), data)

    def remove(self, *names: str) -> None:
        """Removes an object or everything under a prefix; nothing there is
        no error."""
        path = self.path(*names)
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(path)

    def read_error(self, e: BaseException, what: str = "") -> CheckpointReadError:
        where = f"{what} in {self.url!r}" if what else repr(self.url)
        return CheckpointReadError(
            f"Cannot read {where}: {type(e).__name__}: {e}. Nothing was changed; reading "
            "again may succeed."
        )
