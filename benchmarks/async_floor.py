"""The floor of any async save on this machine, for `compare.py`'s `fit` table.

An async save copies the state in the training thread and leaves the rest
(the write, the fsync, the deletion of an old file) to something else: a
thread of the training process (tfckpt, TF, Orbax) or a separate writer
process fed through shared memory (PyTorch DCP's design). These two Keras
callbacks do the least such a save can: at each epoch end they copy the
state's bytes into a host buffer made once, and write them to one new file +
fsync (`raw_write.py`), in a background thread or in a long-lived writer
process, at tfckpt's background nice value, keeping the last 3 files. No
checkpoint format, no checksums, no commit protocol: what they cost `fit` is
what moving the bytes alone costs it, in either place.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf
from raw_write import KEEP, write_file

from tfckpt.store.background import BACKGROUND_NICE, lower_thread_priority


def _variables(model: keras.Model) -> list:
    return model.weights + model.optimizer.variables


def _bytes_of(variable) -> np.ndarray:
    """A variable's bytes, as a view of the tensor read (no copy of its own)."""
    return np.asarray(tf.convert_to_tensor(variable)).reshape(-1).view(np.uint8)


class ThreadWriter(keras.callbacks.Callback):
    """Copies the state into host buffers at each epoch end (made at the
    first, reused after: fresh memory costs page faults on a VM); a background
    thread writes them. The final save is durable before `fit` returns."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        self.pool = concurrent.futures.ThreadPoolExecutor(1, initializer=lower_thread_priority)
        self.pending: concurrent.futures.Future | None = None
        self.buffers: list[np.ndarray] = []

    def on_epoch_end(self, epoch, logs=None):
        self.wait()
        parts = [_bytes_of(v) for v in _variables(self.model)]
        if not self.buffers:
            self.buffers = [np.empty_like(part) for part in parts]
        for buffer, part in zip(self.buffers, parts):
            np.copyto(buffer, part)
        self.pending = self.pool.submit(write_file, self.buffers, self.directory, epoch, KEEP)

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def on_train_end(self, logs=None):
        self.wait()
        self.pool.shutdown()


# The writer process: no TensorFlow, only the shared buffer and `write_file`.
_WRITER = """
import mmap, os, sys
shared, directory, nice, here, keep = sys.argv[1:6]
sys.path.insert(0, here)
from raw_write import write_file
os.setpriority(os.PRIO_PROCESS, 0, int(nice))
with open(shared, "rb") as f:
    buffer = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
for line in sys.stdin:
    write_file([buffer], directory, int(line), int(keep))
    print(line.strip(), flush=True)
"""


class ProcessWriter(keras.callbacks.Callback):
    """Copies the state into shared memory (a file on /dev/shm) at each epoch
    end; a writer process, started with the callback (before `fit`), writes
    it. The final save is durable before `fit` returns."""

    def __init__(self, directory: str, nbytes: int):
        super().__init__()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.shared = tempfile.mkstemp(prefix="tfckpt-floor-", dir=shm)
        os.ftruncate(fd, nbytes)
        os.close(fd)
        self.buffer = np.memmap(self.shared, dtype=np.uint8, mode="r+", shape=(nbytes,))
        here = os.path.dirname(os.path.abspath(__file__))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER,
                self.shared,
                directory,
                str(BACKGROUND_NICE),
                here,
                str(KEEP),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.in_flight = False

    def on_epoch_end(self, epoch, logs=None):
        self.wait()
        offset = 0
        for v in _variables(self.model):
            part = _bytes_of(v)
            self.buffer[offset : offset + part.size] = part
            offset += part.size
        self.process.stdin.write(f"{epoch}\n")
        self.process.stdin.flush()
        self.in_flight = True

    def wait(self) -> None:
        if self.in_flight:
            if not self.process.stdout.readline():
                raise RuntimeError(f"the writer process ended ({self.process.poll()})")
            self.in_flight = False

    def on_train_end(self, logs=None):
        self.wait()
        self.process.stdin.close()
        self.process.wait()
        del self.buffer
        os.remove(self.shared)
