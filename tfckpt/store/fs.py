"""File helpers over `tf.io.gfile`, plus the fsyncs gfile does not offer.

Everything goes through `tf.io.gfile` so any TensorFlow filesystem works
(local disk, `ram://`, `gs://`, ...). Durability calls (`fsync`) only exist for
local paths; object stores make a file durable when it is closed.

A run directory may come from someone else, so on local disks its entries are
looked at, never through: reads open regular files only (never following a
symbolic link, never blocking on a FIFO, bounded in size), and removals never
follow a link (`remove_quietly`). Object stores have no links or special files.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import stat
import zlib
from typing import Any

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


class NotRegularFile(ValueError):
    """An entry that tfckpt neither reads nor writes through: a symbolic link, a
    FIFO, a device or socket where a file belongs, or a file larger than allowed."""

    def __init__(self, path: str, what: str):
        super().__init__(f"{os.path.basename(path)} is {what}")
        self.what = what  # "a symbolic link", "a FIFO, not a file", ...


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def _op_error(e: OSError, path: str) -> tf.errors.OpError:
    """An OSError as the `tf.errors` type gfile would have raised."""
    message = f"{path}; {e.strerror or e}"
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return tf.errors.NotFoundError(None, None, message)
    if e.errno in (errno.EACCES, errno.EPERM):
        return tf.errors.PermissionDeniedError(None, None, message)
    return tf.errors.UnknownError(None, None, message)


def entry_kind(path: str) -> str | None:
    """`"file"`, `"directory"`, what else the entry is (`"a symbolic link"`,
    `"a FIFO"`, ...) without following it, or `None` where there is none."""
    try:
        if not is_local(path):
            return "directory" if tf.io.gfile.stat(path).is_directory else "file"
        mode = os.lstat(local_path(path)).st_mode
    except FileNotFoundError:
        return None
    except tf.errors.NotFoundError:
        return None
    except OSError as e:
        raise _op_error(e, path) from e
    if stat.S_ISREG(mode):
        return "file"
    return "directory" if stat.S_ISDIR(mode) else _kind(mode)


def size(path: str) -> int:
    """A file's size; `NotRegularFile` for a local entry that is no regular file."""
    if not is_local(path):
        return tf.io.gfile.stat(path).length
    try:
        st = os.lstat(local_path(path))
    except OSError as e:
        raise _op_error(e, path) from e
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(path, f"{_kind(st.st_mode)}, not a file")
    return st.st_size


def free_bytes(path: str) -> int | None:
    """Bytes available to this user on `path`'s filesystem, if it says."""
    if not is_local(path):
        return None
    try:
        st = os.statvfs(local_path(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def parse_json(data: bytes) -> Any:
    """JSON from an untrusted file: every way it can be malformed (nesting
    deep enough to exhaust the parser's recursion too) is a `ValueError`."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError as e:
        raise ValueError(str(e)) from None


def open_regular(path: str, flags: int) -> tuple[int, os.stat_result]:
    """A local regular file opened with `flags` (and `O_CREAT`'s mode 0o644),
    never through a link and never blocking (a FIFO), with its `fstat`; a link
    or special file is a `NotRegularFile`, other failures an `OSError`."""
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(local_path(path), flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(path, "a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFile(path, f"{_kind(st.st_mode)}, not a file")
    return fd, st


def read_bytes(path: str, limit: int | None = None) -> bytes:
    """A file's bytes; more than `limit` bytes is a `NotRegularFile` error, not
    a read. On local disks only a regular file is read (`open_regular`)."""
    too_large = f"larger than {limit} bytes"
    if not is_local(path):
        if limit is not None and tf.io.gfile.stat(path).length > limit:
            raise NotRegularFile(path, too_large)
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    try:
        fd, st = open_regular(path, os.O_RDONLY)
    except OSError as e:
        raise _op_error(e, path) from e
    try:
        if limit is not None and st.st_size > limit:
            raise NotRegularFile(path, too_large)
        chunks, total = [], 0
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:  # grew meanwhile
                raise NotRegularFile(path, too_large)
        return b"".join(chunks)
    except OSError as e:
        raise _op_error(e, path) from e
    finally:
        _close_quietly(fd)  # what was read is whole


def drop_cached_files(directory: str, names: re.Pattern[str], limit: int = 4096) -> int:
    """Asks the kernel to drop the cached pages of the files in the local
    directory `directory` whose names match `names` and that have no other
    name (a hard link shares its pages with another checkpoint's file); looks
    at `limit` entries at most, and returns the bytes those files hold.

    The pages go back to the kernel's free lists at once, where the next
    allocation finds them: on a VM whose free memory is returned to the host
    after a few seconds (virtio-balloon free page reporting), memory freed
    long ago costs a host fault per page when it is used again. Only cache is
    dropped, nothing is read or written, and it never fails: a link, special
    file or error is left alone."""
    if not is_local(directory) or not hasattr(os, "posix_fadvise"):
        return 0
    try:
        # Opened once, never through a link: the entries are then those of
        # this directory, even if its name is swapped meanwhile.
        dfd = os.open(local_path(directory), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return 0
    dropped = 0
    try:
        with os.scandir(dfd) as entries:
            found = [
                e.name
                for e in itertools.islice(entries, limit)
                if names.match(e.name) and e.is_file(follow_symlinks=False)
            ]
        for name in found:
            dropped += _drop_cached_file(name, dfd)
    except OSError:
        pass
    finally:
        _close_quietly(dfd)
    return dropped


def _drop_cached_file(name: str, dfd: int) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return 0
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return st.st_size
    except OSError:
        return 0
    finally:
        _close_quietly(fd)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # Linux frees the descriptor even then


def remove_quietly(path: str) -> None:
    """Removes a file or directory tree, if it can (what is left of an
    interrupted save or deletion; the next writer tries again).

    On local disks nothing is followed: a directory's tree is removed entry
    by entry (`shutil.rmtree` unlinks a link inside it, never its target),
    and an entry that is itself a link or a special file is left alone:
    tfckpt never made it."""
    if is_local(path):
        try:
            mode = os.lstat(local_path(path)).st_mode
            if stat.S_ISDIR(mode):
                shutil.rmtree(local_path(path), ignore_errors=True)
            elif stat.S_ISREG(mode):
                os.unlink(local_path(path))
        except OSError:
            pass
        return
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except tf.errors.OpError:
        pass


def write_new_file(path: str, data: bytes) -> None:
    """Writes `data` to `path` without writing through what stands there: on
    local disks an existing link, special file or file with other names (hard
    links) is refused with `NotRegularFile`, never followed or truncated."""
    if not is_local(path):
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
        return
    fd, st = open_regular(path, os.O_WRONLY | os.O_CREAT)
    try:
        if st.st_nlink != 1:
            raise NotRegularFile(path, "hard-linked: not written")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
