"""File helpers over `tf.io.gfile`, plus the fsyncs gfile does not offer.

Everything goes through `tf.io.gfile` so any TensorFlow filesystem works
(local disk, `ram://`, `gs://`, ...). Durability calls (`fsync`) only exist for
local paths; object stores make a file durable when it is closed.
"""

from __future__ import annotations

import os
import zlib

import tensorflow as tf
import xxhash

_CHUNK = 8 << 20


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> str:
    """`path` without a `file://` scheme, for `os` calls."""
    return path[len("file://") :] if path.startswith("file://") else path


def join(*parts: str) -> str:
    # os.path.join works for URLs too ("ram://d" + "x" -> "ram://d/x").
    return os.path.join(*parts)


def fsync_file(path: str) -> None:
    if not is_local(path):
        return
    fd = os.open(local_path(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    if not is_local(path):
        return
    fd = os.open(local_path(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: str, *, fsync: bool = True) -> None:
    """`tf.io.gfile.makedirs`, and on local disks an fsync of the parent of
    each directory it created: a new directory's name lives in its parent, so
    without that a power loss may lose the directory with all it holds."""
    if not is_local(path) or not fsync:
        tf.io.gfile.makedirs(path)
        return
    created = []
    current = os.path.abspath(local_path(path))
    while not os.path.isdir(current):
        created.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    tf.io.gfile.makedirs(path)
    for directory in created:  # deepest first: each parent holds a new name
        fsync_dir(os.path.dirname(directory))


def crc32(path: str) -> int:
    """CRC-32 of a file's bytes (zlib's, which releases the GIL while it runs)."""
    value = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            value = zlib.crc32(chunk, value)
    return value


def content_hash(path: str) -> str:
    """xxh3-128 of a file's bytes (hex): a fast hash (about 10 GB/s), strong
    enough that two files with the same hash are taken to be equal."""
    h = xxhash.xxh3_128()
    if is_local(path):
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        with open(local_path(path), "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                h.update(view[:n])
    else:
        with tf.io.gfile.GFile(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def replace_with_link(source: str, path: str) -> None:
    """Makes `path` a hard link to `source` (same bytes, no copy), atomically:
    `path` is the old file or the link, never missing. Local disks only;
    raises OSError where the filesystem has no hard links."""
    temporary = f"{local_path(path)}.link"
    os.link(local_path(source), temporary)
    try:
        os.replace(temporary, local_path(path))
    except OSError:
        os.unlink(temporary)
        raise


def link_count(path: str) -> int | None:
    """How many directory entries name this file (>1: hard-linked); None where
    that cannot be told."""
    if not is_local(path):
        return None
    try:
        return os.stat(local_path(path)).st_nlink
    except OSError:
        return None


def size(path: str) -> int:
    return tf.io.gfile.stat(path).length


def free_bytes(path: str) -> int | None:
    """Bytes available to this user on `path`'s filesystem, if it says."""
    if not is_local(path):
        return None
    try:
        st = os.statvfs(local_path(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def read_bytes(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def remove_quietly(path: str) -> None:
    """Removes a file or directory tree, if it can (what is left of an
    interrupted save or deletion; the next writer tries again)."""
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except tf.errors.OpError:
        pass
