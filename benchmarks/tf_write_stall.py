"""Whole-process stalls after TensorFlow checkpoint writes during `fit`.

    python benchmarks/tf_write_stall.py            # ~3 minutes on a 2-core VM

Trains the benchmark model (`compare.build_model`, 240 MiB of weights + Adam
state) for 6 epochs of 64 steps, once per way of writing at each epoch end:
nothing; the same bytes with Python's `open().write` (with and without
fsync); a plain `tf.train.Checkpoint.write` in `on_epoch_end`; the same write
from a background thread. A monitor thread samples the CPU time of every
thread of the process twice a second and counts the half-seconds in which no
thread used any CPU while `fit` ran. No tfckpt code is involved.

On this project's VM the stalls come and go between runs (up to ~4 s per fit
of 6 epochs). Later measurements (2026-12-06) saw pauses of 8.8 to 30.8 s in
fits without any checkpointing as well, and no thread holding Python's lock
during background writes: the pauses are the VM's. Run it with the
"nothing" row in mind.
"""

from __future__ import annotations

import argparse
import glob
import os
import queue
import shutil
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from compare import build_model


def process_cpu_ticks() -> int:
    total = 0
    for task in glob.glob(f"/proc/{os.getpid()}/task/*/stat"):
        try:
            fields = open(task).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps", type=int, default=64)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="tfckpt-stall-")
    model = build_model(227)
    width = model.input_shape[-1]
    x = np.random.rand(32 * args.steps, width).astype("float32")
    y = np.random.rand(32 * args.steps, 1).astype("float32")
    model.fit(x[:256], y[:256], batch_size=32, epochs=1, verbose=0)  # trace once
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    blob = np.concatenate([v.numpy().ravel() for v in model.weights + model.optimizer.variables])

    idle, fitting = [], threading.Event()

    def monitor():
        previous = process_cpu_ticks()
        while True:
            time.sleep(0.5)
            now = process_cpu_ticks()
            if fitting.is_set() and now == previous:
                idle.append(1)
            previous = now

    threading.Thread(target=monitor, daemon=True).start()
    jobs: queue.Queue = queue.Queue()

    def background_writer():
        while True:
            path = jobs.get()
            checkpoint.write(path)
            jobs.task_done()

    threading.Thread(target=background_writer, daemon=True).start()

    def raw(epoch, fsync):
        with open(os.path.join(root, f"raw{epoch}"), "wb") as f:
            f.write(blob.data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    def in_background(epoch):
        jobs.join()
        jobs.put(os.path.join(root, f"bg{epoch}", "ckpt"))

    ways = {
        "nothing": lambda e: None,
        "python open().write": lambda e: raw(e, False),
        "python open().write + fsync": lambda e: raw(e, True),
        "tf.train.Checkpoint.write": lambda e: checkpoint.write(
            os.path.join(root, f"fg{e}", "ckpt")
        ),
        "tf.train.Checkpoint.write, background thread": in_background,
    }
    print("| written at each epoch end | fit seconds | half-seconds with no CPU used |")
    print("|---|---:|---:|")
    for name, write in ways.items():
        idle.clear()
        callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs, w=write: w(e))
        fitting.set()
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0, callbacks=[callback])
        jobs.join()
        seconds = time.perf_counter() - t0
        fitting.clear()
        print(f"| {name} | {seconds:.1f} | {len(idle)} |", flush=True)
        for entry in os.listdir(root):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
            if os.path.isfile(os.path.join(root, entry)):
                os.remove(os.path.join(root, entry))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
