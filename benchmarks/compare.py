"""Side-by-side checkpointing benchmark: tfckpt against the Keras/TF options.

    python benchmarks/compare.py --size-mb 227 --scale   # what README reports
    python benchmarks/compare.py --size-mb 8 --repeats 2 --fit-steps 4   # smoke size

Everything runs in one process (but the writer process of one async floor,
`async_floor.py`), on the same model and the same disk, each measurement
repeated and its median reported. Prints Markdown tables, writes
the figures to JSON (`--json`, default benchmarks/results.json), and with
`--scale` the scale curve (8 MB to 2 GB, and 2,000 and 6,000 small variables)
with its plot (benchmarks/scale.png); `--only-scale` measures only that curve
and replaces it in the JSON. `python benchmarks/report.py` turns results.json
into README's tables.

Each checkpointer writes in its own directory and keeps the last 3
checkpoints (`KEEP`, tfckpt's default retention), and so does the raw
reference: on this VM a write is much faster into memory just freed (a
deleted file's page cache) than into memory freed seconds before, which the
host has taken back, so only the same pattern of deletions compares fairly
(docs/performance.md, "Page cache on VMs").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from async_floor import ProcessWriter, ThreadWriter
from raw_write import KEEP, write_file

import tfckpt
from tfckpt.store import checkpoint_store, fs, sharing


def build_model(size_mb: float) -> keras.Model:
    """Dense layers whose weights plus two Adam slots take about `size_mb`."""
    width = 2048 if size_mb >= 100 else 256
    params = size_mb * 2**20 / 12  # float32 weights x 3 (weights, m, v)
    layers = max(1, round(params / (width * width)))
    model = keras.Sequential(
        [keras.Input((width,))]
        + [keras.layers.Dense(width, activation="relu") for _ in range(layers)]
        + [keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.Adam(1e-5), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


class ManyWeights(keras.layers.Layer):
    """`count` small weights: the per-variable overhead case of the scale curve."""

    def __init__(self, count: int, shape: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        self.count, self.weight_shape = count, shape

    def build(self, input_shape):
        self.ws = [
            self.add_weight(shape=self.weight_shape, initializer="random_normal", name=f"w{i}")
            for i in range(self.count)
        ]

    def call(self, x):
        return x + keras.ops.sum(keras.ops.stack([keras.ops.sum(w) for w in self.ws]))


def many_variables_model(count: int = 2000) -> keras.Model:
    model = keras.Sequential([keras.Input((1,)), ManyWeights(count, (64, 64))])
    model.compile(keras.optimizers.Adam(1e-5), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def io_counters() -> dict[str, int]:
    """This process's I/O accounting (Linux, all threads): `wchar` counts bytes
    passed to write(), `write_bytes - cancelled_write_bytes` bytes that reach
    the disk (pages dirtied and not discarded before writeback)."""
    try:
        with open("/proc/self/io") as f:
            return {k: int(v) for k, v in (line.split(": ") for line in f.read().splitlines())}
    except OSError:
        return {}


def disk_used(path: str) -> int:
    """Blocks allocated under `path`, each hard-linked file counted once."""
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def raw_writer(arrays: list[np.ndarray], directory: str, keep: int = KEEP):
    """Writes the bytes of `arrays` to a new file + fsync, keeping the last `keep`."""
    parts = [memoryview(np.ascontiguousarray(a)).cast("B") for a in arrays]
    return lambda i: write_file(parts, directory, i, keep)


def async_times(manager, repeats: int, before=None) -> tuple[float, float]:
    """Median seconds an async save blocks, and until it is committed."""
    blocked, committed = [], []
    for i in range(repeats + WARMUP):
        manager.wait()
        if before is not None:
            before()
        os.sync()
        t0 = time.perf_counter()
        manager.save(i + 1, epoch=i + 1)
        t1 = time.perf_counter()
        manager.wait()
        if i >= WARMUP:
            blocked.append(t1 - t0)
            committed.append(time.perf_counter() - t0)
    return statistics.median(blocked), statistics.median(committed)


INCREMENTAL_VARIANTS = {
    "full": {"incremental": False},
    "incremental": {"incremental": True},
    "incremental, no read-back": {"incremental": True},
}


def bench_incremental(size_mb: float, saves: int, fresh) -> dict:
    """Fine-tuning with a frozen backbone: every Dense layer but the last two
    frozen, one train step between saves; full saves, incremental saves, and
    incremental saves without the read-back of the file linked to (what that
    check costs), interleaved save by save in a rotating order, each variant
    saving the same state into its own directory."""
    model = build_model(size_mb)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    for layer in dense[:-2]:
        layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-5), "mse")
    model.optimizer.build(model.trainable_variables)
    x = np.random.rand(32, model.input_shape[-1]).astype("float32")
    y = np.random.rand(32, 1).astype("float32")
    variables = model.weights + model.optimizer.variables
    out: dict = {"state bytes": sum(v.numpy().nbytes for v in variables), "saves": saves}
    names = list(INCREMENTAL_VARIANTS)
    dirs = {name: fresh(f"incremental_{i}") for i, name in enumerate(names)}
    managers = {
        name: tfckpt.CheckpointManager(dirs[name], model, keep_last=None, **options)
        for name, options in INCREMENTAL_VARIANTS.items()
    }
    figures = {name: {"s": [], "passed": [], "disk": []} for name in names}
    changed = []
    for i in range(saves):
        before = [v.numpy() for v in variables]
        model.train_on_batch(x, y)
        after = [v.numpy() for v in variables]
        changed.append(sum(b.nbytes for b, a in zip(before, after) if not np.array_equal(a, b)))
        for name in names[i % 3 :] + names[: i % 3]:
            sharing.CHECK_BEFORE_LINKING = name != "incremental, no read-back"
            os.sync()
            c0, t0 = io_counters(), time.perf_counter()
            managers[name].save(i + 1, epoch=i + 1)
            figures[name]["s"].append(time.perf_counter() - t0)
            c1 = io_counters()
            figures[name]["passed"].append(c1.get("wchar", 0) - c0.get("wchar", 0))
            figures[name]["disk"].append(
                (c1.get("write_bytes", 0) - c1.get("cancelled_write_bytes", 0))
                - (c0.get("write_bytes", 0) - c0.get("cancelled_write_bytes", 0))
            )
    sharing.CHECK_BEFORE_LINKING = True
    for name in names:
        managers[name].close()
        # The first two saves write everything (the two newest checkpoints
        # never share a file): the figures are of the saves after them.
        out[name] = {
            "seconds per save": statistics.median(figures[name]["s"][2:]),
            "bytes passed to write() per save": statistics.median(figures[name]["passed"][2:]),
            "bytes to disk per save": statistics.median(figures[name]["disk"][2:]),
            "changed bytes per save": statistics.median(changed[2:]),
            "disk used": disk_used(dirs[name]),
        }
    return out


def incremental_ratios(incremental: dict) -> dict[str, float]:
    inc, full = incremental["incremental"], incremental["full"]
    unchecked = incremental["incremental, no read-back"]
    # Two physical copies of what does not change (the two newest checkpoints
    # never share a file), and what changed once per save after them.
    expected = (
        2 * incremental["state bytes"] + (incremental["saves"] - 2) * inc["changed bytes per save"]
    )
    return {
        "incremental: bytes to disk / changed bytes": inc["bytes to disk per save"]
        / inc["changed bytes per save"],
        "incremental: disk used / (2 full states + (N-2) x changed)": inc["disk used"] / expected,
        "incremental: save time / full save time": inc["seconds per save"]
        / full["seconds per save"],
        "incremental: save time / without the read-back": inc["seconds per save"]
        / unchecked["seconds per save"],
    }


def measure_point(label: str, model: keras.Model, repeats: int, fresh) -> dict:
    """One point of the scale curve: save, async-blocked and restore times
    against raw write+fsync and raw read of the same bytes, and against TF's
    own save and restore. The saves (and then the restores) are interleaved
    one by one in a rotating order, so that the drift of a shared VM's disk
    falls on all of them alike."""
    raw = fresh("scale_raw")
    tf_dir = fresh("scale_tf")
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    tf_manager = tf.train.CheckpointManager(ckpt, tf_dir, max_to_keep=KEEP)
    managers = {
        "tfckpt sync save": tfckpt.CheckpointManager(fresh("scale_sync"), model, keep_last=KEEP),
        # What the default's file split costs (incremental saves write more
        # data files than TF's one: tfckpt/store/shards.py).
        "tfckpt sync save, incremental=False": tfckpt.CheckpointManager(
            fresh("scale_full"), model, keep_last=KEEP, incremental=False
        ),
    }

    def tfckpt_save(manager):
        return lambda i: manager.save(i + 1, epoch=i + 1)

    arrays = state_arrays(model)
    nbytes = sum(a.nbytes for a in arrays)
    samples = interleaved(
        {
            "raw write+fsync": raw_writer(arrays, raw),
            "tf save + fsync": lambda i: (tf_manager.save(), fsync_tree(tf_dir)),
            **{name: tfckpt_save(manager) for name, manager in managers.items()},
        },
        repeats,
        lambda: perturb(model),
    )
    del arrays
    last = os.path.join(raw, f"state-{repeats + WARMUP - 1}.bin")

    # A resume restores once, into objects with no restore of their own yet:
    # TF's side of the comparison reads through a new tf.train.Checkpoint each
    # time and checks it consumed everything, as tfckpt's restore does. (Read
    # again through the same object, TF reuses what it built the first time.)
    def tf_restore_cold(i):
        fresh_ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        fresh_ckpt.save_counter  # noqa: B018 - created, as the saved one was, to be consumed
        fresh_ckpt.read(tf_manager.latest_checkpoint).assert_consumed()

    samples |= interleaved(
        {
            "raw read": lambda i: open(last, "rb").read(),
            "tf restore": tf_restore_cold,
            "tf restore, same object again": lambda i: ckpt.read(tf_manager.latest_checkpoint),
            "tfckpt restore": lambda i: managers["tfckpt sync save"].restore(),
        },
        repeats,
    )
    for manager in managers.values():
        manager.close()
    seconds = {name: statistics.median(ts) for name, ts in samples.items()}
    manager = tfckpt.CheckpointManager(fresh("scale_async"), model, keep_last=KEEP, async_save=True)
    seconds["tfckpt async blocked"], _ = async_times(manager, repeats, lambda: perturb(model))
    manager.close()
    return {
        "label": label,
        "bytes": nbytes,
        "variables": len(model.weights + model.optimizer.variables),
        "seconds": seconds,
        # Every timed save and restore, in the order run: the medians hide
        # the slow saves, whose pages came from memory the host had taken
        # back (docs/performance.md, "Page cache on VMs").
        "samples": samples,
        "ratios": {
            "save / raw write+fsync": seconds["tfckpt sync save"] / seconds["raw write+fsync"],
            "save / tf save+fsync": seconds["tfckpt sync save"] / seconds["tf save + fsync"],
            "save, incremental=False / tf save+fsync": (
                seconds["tfckpt sync save, incremental=False"] / seconds["tf save + fsync"]
            ),
            "restore / raw read": seconds["tfckpt restore"] / seconds["raw read"],
            "restore / tf restore": seconds["tfckpt restore"] / seconds["tf restore"],
        },
    }


def bench_scale(
    sizes: list[float], repeats: int, fresh, many: tuple[int, ...] = (2000, 6000)
) -> list[dict]:
    points = []
    for size in sizes:
        model = build_model(size)
        points.append(measure_point(f"{size:g} MB", model, repeats, fresh))
        del model
        keras.backend.clear_session()
        gc.collect()
    for total in many:  # variables in all: weights and their two Adam slots
        model = many_variables_model(max(1, total // 3))
        points.append(measure_point(f"{total:,} small variables", model, repeats, fresh))
        del model
        keras.backend.clear_session()
        gc.collect()
    return points


def scale_points(args: argparse.Namespace) -> tuple[list[float], tuple[int, ...]]:
    """The scale curve's sizes (MB) and many-variable counts from the CLI."""
    sizes = [float(v) for v in args.scale_sizes.split(",") if v]
    many = tuple(int(n) for n in args.many_variables.split(",") if n)
    return sizes, many


def fresh_dirs(root: str):
    """`fresh(name)`: an empty directory `root/name` (emptied if it exists:
    each scale point reuses its names)."""

    def fresh(name: str) -> str:
        d = os.path.join(root, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    return fresh


def plot_scale(points: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sized = [p for p in points if p["label"].endswith("MB")]
    many = [p for p in points if not p["label"].endswith("MB")]
    mib = [p["bytes"] / 2**20 for p in sized]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, style in [
        ("raw write+fsync", "k--"),
        ("tfckpt sync save", "C0-o"),
        ("tf save + fsync", "C3-o"),
        ("raw read", "k:"),
        ("tfckpt restore", "C1-o"),
        ("tfckpt async blocked", "C2-o"),
    ]:
        left.loglog(mib, [p["seconds"][key] for p in sized], style, label=key)
        for p in many:
            left.loglog([p["bytes"] / 2**20], [p["seconds"][key]], style[:2] + "*", ms=11)
    left.set_xlabel("state (MiB of weights + Adam slots)")
    left.set_ylabel("seconds")
    left.set_title("time per operation (stars: 2,000 small variables)")
    left.legend(fontsize=8)
    for key, style in [
        ("save / raw write+fsync", "C0-o"),
        ("save / tf save+fsync", "C3-o"),
        ("restore / raw read", "C1-o"),
    ]:
        right.semilogx(mib, [p["ratios"][key] for p in sized], style, label=key)
        for p in many:
            right.semilogx([p["bytes"] / 2**20], [p["ratios"][key]], style[:2] + "*", ms=11)
    right.set_yscale("log")
    right.axhline(1.0, color="k", lw=0.5)
    right.set_xlabel("state (MiB)")
    right.set_ylabel("ratio to the raw operation")
    right.set_title("tfckpt / raw and / TensorFlow, same bytes, same disk")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def state_arrays(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.weights + model.optimizer.variables]


def fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for f in files:
            fs.fsync_file(os.path.join(root, f))
        fs.fsync_dir(root)


def perturb(model) -> None:
    """Changes every float variable a little, as a train step would: a save of
    an unchanged state would share every file with the previous one."""
    for v in model.weights + model.optimizer.variables:
        if "float" in str(v.dtype):
            v.assign(v * 0.999 + 1e-6)


# Saves not timed first: a directory reaches its steady state (the last
# `KEEP` kept, the oldest deleted at each save) at save `KEEP + 1`.
WARMUP = KEEP


def interleaved(fns: dict, repeats: int, before=None) -> dict[str, list[float]]:
    """Seconds of each of `fns` (name -> fn(i)), run one after the other
    `repeats` times (after `WARMUP` untimed rounds), the order rotated from
    round to round; `before()` runs untimed before each call."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats + WARMUP):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            if before is not None:
                before()
            # Dirty pages of the previous measurement (a save without fsync)
            # would otherwise be written back during this one.
            os.sync()
            t0 = time.perf_counter()
            fns[name](i)
            if i >= WARMUP:
                times[name].append(time.perf_counter() - t0)
    return times


# The index of the first save of a fit after which the option deletes one
# (it keeps KEEP): from there on, a long training's steady state.
STEADY_FROM = KEEP


class CacheNotRecycled(keras.callbacks.Callback):
    """For one fit, tfckpt's saves keep the cache of older checkpoints
    (`checkpoint_store.RECYCLE_CACHE`): place it after tfckpt's callback, so
    that it is off from before the first save to after fit's final one."""

    def on_train_begin(self, logs=None):
        checkpoint_store.RECYCLE_CACHE = False

    def on_train_end(self, logs=None):
        checkpoint_store.RECYCLE_CACHE = True


class StepTimes(keras.callbacks.Callback):
    """When each train step starts and ends, seen from outside every other
    callback: place `StepTimes.around(callbacks)` around them. The gap between
    an epoch's last step and the next epoch's first is everything `fit` waited
    for there (every callback's hooks and whatever they wrap, e.g. a save
    that runs once all callbacks have seen the epoch end).

    A fit ends at the last callback's `on_train_end` (`train_ended`), not when
    `fit` returns: returning frees fit's tf.data iterator, and TF's destructor
    waits for the pipeline's autotuning thread to wake from its sleep (up to
    about 20 s measured here, at random, with or without checkpointing)."""

    def __init__(self):
        super().__init__()
        self.step_ends: dict[int, float] = {}  # epoch -> end of its last step
        self.first_begins: dict[int, float] = {}  # epoch -> start of its first step
        self.epoch = 0
        self.outer = _StepEnds(self)

    def around(self, callbacks: list) -> list:
        return [self.outer, *callbacks, self]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.first_begins.setdefault(self.epoch, time.perf_counter())

    def on_train_end(self, logs=None):
        self.train_ended = time.perf_counter()

    def gaps(self) -> list[float]:
        """Seconds between epochs (and from the last step to the end of fit)."""
        epochs = sorted(self.step_ends)
        out = [self.first_begins[e + 1] - self.step_ends[e] for e in epochs[:-1]]
        return out + [self.train_ended - self.step_ends[epochs[-1]]]


class _StepEnds(keras.callbacks.Callback):
    def __init__(self, times: StepTimes):
        super().__init__()
        self.times = times

    def on_train_batch_end(self, batch, logs=None):
        self.times.step_ends[self.times.epoch] = time.perf_counter()


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


class SaveInFit(keras.callbacks.Callback):
    """A reference save in `on_epoch_end` (`save(epoch)`), for comparing with
    tfckpt's callback inside the same kind of fit."""

    def __init__(self, save):
        super().__init__()
        self.save = save

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch)


def bench_fit(
    size_mb: float, steps: int, epochs: int, rounds: int, fresh, only: list[str] | None = None
) -> dict:
    """What saving every epoch costs `fit`, with the default retention
    (keep_last=3: a deletion follows most saves), against the same fit without
    checkpointing and the same bytes written by a raw write+fsync, TF's own
    CheckpointManager save + fsync (max_to_keep=3) and Keras' ModelCheckpoint,
    each saving from `on_epoch_end` of the same kind of fit.

    Each option runs once per round, the order rotated from round to round
    (the speed of a shared VM and its disk drifts by more than the effects
    measured), and is compared with the fit without checkpointing of its own
    round. The data is a repeated tf.data pipeline, so `fit` keeps one
    iterator (an epoch of NumPy arrays starts a new one, which took up to
    0.5 s here and would drown the saves). Reported, median and min-max:

    - blocked per save: the time between an epoch's last train step and the
      next epoch's first, less the same gap without checkpointing
      (`StepTimes`): every callback hook and whatever a save does around them;
      over the saves from save KEEP + 1 on (the steady state, where a
      deletion follows each save; Keras's ModelCheckpoint overwrites one
      file), fit's final save and the first save (tracing) reported apart;
    - steps/s and the ratio to no checkpointing: the whole fit, so also the
      cost inside training steps (an async save's copy-on-write, its
      background write competing for the cores);
    - rounds in which async was faster than sync.

    `only`: the options to run (no checkpointing always runs)."""
    model = build_model(size_mb)
    batch = 32
    x = np.random.rand(batch * steps, model.input_shape[-1]).astype("float32")
    y = np.random.rand(batch * steps, 1).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)  # trace once
    count = [0]
    made: list[str] = []  # this fit's directories, removed after it

    def directory(name):
        count[0] += 1
        made.append(fresh(f"fit_{name}_{count[0]}"))
        return made[-1]

    def raw():
        write = raw_writer(state_arrays(model), directory("raw"), keep=KEEP)
        return [SaveInFit(lambda epoch: write(epoch))]

    def tf_save():
        d = directory("tf")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        manager = tf.train.CheckpointManager(checkpoint, d, max_to_keep=KEEP)
        return [SaveInFit(lambda epoch: (manager.save(), fsync_tree(d)))]

    def tfckpt_callback(**kwargs):
        return lambda: [
            tfckpt.CheckpointCallback(directory("tfckpt"), monitor=None, verbose=0, **kwargs)
        ]

    nbytes = sum(a.nbytes for a in state_arrays(model))  # the writer's buffer, the report
    options = {
        "no checkpointing": lambda: [],
        "raw write+fsync": raw,
        "tf save + fsync": tf_save,
        "keras ModelCheckpoint (.weights.h5, no fsync)": lambda: [
            keras.callbacks.ModelCheckpoint(
                os.path.join(directory("keras"), "w.weights.h5"), save_weights_only=True
            )
        ],
        "tfckpt sync": tfckpt_callback(),
        "tfckpt async": tfckpt_callback(async_save=True),
        # What dropping the third-newest checkpoint's cache before each
        # save's write saves (checkpoint_store.RECYCLE_CACHE).
        "tfckpt sync, cache not recycled": lambda: [*tfckpt_callback()(), CacheNotRecycled()],
        "tfckpt async, cache not recycled": lambda: [
            *tfckpt_callback(async_save=True)(),
            CacheNotRecycled(),
        ],
        # The floor of any async save here: the copy, then only the bytes'
        # write+fsync, in a thread or in a writer process (async_floor.py).
        "raw write+fsync in a thread": lambda: [ThreadWriter(directory("thread"))],
        "raw write+fsync in a writer process": lambda: [
            ProcessWriter(directory("process"), nbytes)
        ],
    }
    if only:
        unknown = set(only) - set(options)
        if unknown:
            raise SystemExit(f"--fit-option: unknown {sorted(unknown)}; known: {list(options)}")
        options = {k: v for k, v in options.items() if k == "no checkpointing" or k in only}
    names = list(options)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    gaps: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times = StepTimes()
            callbacks = times.around(options[name]())
            os.sync()  # no writeback of the previous fit's saves in this one
            t0 = time.perf_counter()
            try:
                model.fit(
                    data,
                    steps_per_epoch=steps,
                    epochs=epochs,
                    verbose=0,
                    shuffle=False,
                    callbacks=callbacks,
                )
            finally:
                checkpoint_store.RECYCLE_CACHE = True  # whatever CacheNotRecycled left
            seconds[name].append(times.train_ended - t0)
            gaps[name].append(times.gaps())
            del callbacks  # a writer process exits, a manager closes, before its files go
            gc.collect()
            while made:
                shutil.rmtree(made.pop(), ignore_errors=True)
    none, none_gaps = seconds["no checkpointing"], gaps["no checkpointing"]
    steady = min(STEADY_FROM, epochs - 2)
    blocked, first, last = {}, {}, {}
    for name in names[1:]:
        per_round = [[g - n for g, n in zip(gs, ns)] for gs, ns in zip(gaps[name], none_gaps)]
        # The first epoch's save traces; the last is fit's final save
        # (on_train_end), which also waits for an async save. In between,
        # from save KEEP + 1 on, a deletion follows each save: the steady
        # state of a long training (with too few epochs, the saves after the
        # first: `steady from save`).
        blocked[name] = spread([b for bs in per_round for b in bs[steady:-1]])
        first[name] = spread([bs[0] for bs in per_round])
        last[name] = spread([bs[-1] for bs in per_round])
    sync, async_ = seconds.get("tfckpt sync", []), seconds.get("tfckpt async", [])
    out: dict = {
        "size_mb": nbytes / 2**20,
        "steps per epoch": steps,
        "epochs": epochs,
        "rounds": rounds,
        "steady from save": steady + 1,
        "blocked per save": blocked,
        "blocked at the first save": first,
        "blocked at the end of fit": last,
        "steps/s": {name: spread([steps * epochs / t for t in ts]) for name, ts in seconds.items()},
        "ratio to no checkpointing": {
            name: spread([n / t for n, t in zip(none, ts)]) for name, ts in seconds.items()
        },
        "rounds async faster than sync": sum(a < s for a, s in zip(async_, sync)),
    }
    median = {name: v["median"] for name, v in blocked.items()}
    out["ratios"] = {
        ratio: median["tfckpt sync"] / median[other]
        for ratio, other in (
            ("sync blocked / raw write+fsync", "raw write+fsync"),
            ("sync blocked / tf save+fsync", "tf save + fsync"),
        )
        if "tfckpt sync" in median and other in median
    }
    return out


def moto_s3() -> tuple[subprocess.Popen, dict[str, str]]:
    """moto's S3 server on 127.0.0.1 (the test extra installs it), and the
    environment that points s3fs at it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return proc, env


def count_s3_requests() -> dict[str, int]:
    """Counts every S3 API call s3fs makes from now on, by operation."""
    import s3fs

    counts: dict[str, int] = {}
    original = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        name = method if isinstance(method, str) else getattr(method, "__name__", str(method))
        counts[name] = counts.get(name, 0) + 1
        return await original(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counted
    return counts


def bench_mirror(size_mb: float, epochs: int, steps: int, fresh) -> dict:
    """The remote tier against moto's S3 server on this machine: `fit`
    throughput with a mirror against local-only saves and no checkpointing
    (interleaved, twice each, best of two), bytes and requests per upload with
    half the model frozen (unchanged files are copied inside the store, not
    sent), and the time from an empty local directory to the first resumed
    step (the download and restore a new machine does)."""
    import fsspec

    server, env = moto_s3()
    os.environ.update(env)
    try:
        fsspec.filesystem("s3").mkdir("bench")
        model = build_model(size_mb)
        half = len(model.layers) // 2
        for layer in model.layers[:half]:
            layer.trainable = False  # a frozen backbone
        model.compile(keras.optimizers.Adam(1e-5), "mse")
        batch = 32
        x = np.random.rand(batch * steps, model.input_shape[-1]).astype("float32")
        y = np.random.rand(batch * steps, 1).astype("float32")
        model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # trace once
        counts = count_s3_requests()
        mirrors: list = []

        class KeepMirror(keras.callbacks.Callback):
            def __init__(self, callback):
                super().__init__()
                self.callback = callback

            def on_train_begin(self, logs=None):  # after tfckpt's: its manager is there
                mirrors.append(self.callback.manager.mirror)

        def callbacks(kind: str, n: int) -> list:
            if kind == "no checkpointing":
                return []
            options = {"mirror": f"s3://bench/run{n}"} if kind == "mirror (S3)" else {}
            cb = tfckpt.CheckpointCallback(
                fresh(f"mirror_{n}"), monitor=None, keep_last=2, verbose=0, **options
            )
            return [cb, KeepMirror(cb)] if options else [cb]

        kinds = ["no checkpointing", "local only", "mirror (S3)"]
        times: dict[str, list[float]] = {k: [] for k in kinds}
        n = 0
        for order in (kinds, kinds[::-1]):
            for kind in order:
                n += 1
                cbs = callbacks(kind, n)
                t0 = time.perf_counter()
                model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=cbs)
                times[kind].append(time.perf_counter() - t0)
        throughput = {k: steps * epochs / min(t) for k, t in times.items()}
        uploads = [u for m in mirrors for u in m.uploads]
        requests = sum(counts.values())
        later = [u for u in uploads if u.copied]  # uploads after the first of a run
        # A new machine: the local directory is gone, the bucket is there.
        last = mirrors[-1].url
        first_step: list[float] = []

        class FirstStep(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if not first_step:
                    first_step.append(time.perf_counter())

        t0 = time.perf_counter()
        cb = tfckpt.CheckpointCallback(fresh("mirror_new_vm"), monitor=None, verbose=0, mirror=last)
        model.fit(x, y, batch_size=batch, epochs=epochs + 1, verbose=0, callbacks=[cb, FirstStep()])
        resume = first_step[0] - t0
        size = sum(v.numpy().nbytes for v in model.weights + model.optimizer.variables)
        return {
            "size_mb": size / 2**20,
            "steps_per_epoch": steps,
            "throughput_steps_per_s": throughput,
            "mirror_vs_local": throughput["mirror (S3)"] / throughput["local only"],
            "mirror_vs_none": throughput["mirror (S3)"] / throughput["no checkpointing"],
            "uploads": len(uploads),
            "first_upload_sent_mb": statistics.median(
                u.sent / 2**20 for u in uploads if not u.copied
            ),
            "later_upload_sent_mb": statistics.median(u.sent / 2**20 for u in later)
            if later
            else None,
            "later_upload_copied_in_store_mb": statistics.median(u.copied / 2**20 for u in later)
            if later
            else None,
            "upload_seconds": statistics.median(u.seconds for u in uploads),
            "s3_requests_per_upload": requests / max(1, len(uploads)),
            "s3_requests_by_operation": dict(counts),
            "empty_directory_to_first_step_s": resume,
        }
    finally:
        server.kill()
        server.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=227)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--fit-steps",
        type=int,
        default=None,
        help="steps per epoch in the fit runs (default: an epoch ~10x an async save's "
        "background time, as the goal is stated; 40 with --only-fit)",
    )
    p.add_argument("--fit-epochs", type=int, default=8)
    p.add_argument("--incremental-saves", type=int, default=20)
    p.add_argument("--scale", action="store_true", help="also measure the scale curve")
    p.add_argument("--scale-sizes", default="8,64,512,2048", help="MB, comma-separated")
    p.add_argument(
        "--scale-repeats",
        type=int,
        default=9,
        help="timed saves and restores of each variant at each point of the scale curve "
        "(a save here is fast when its pages reuse memory just freed and slow when the "
        "host had taken that memory back: a median of 3 picked one or the other)",
    )
    p.add_argument(
        "--many-variables",
        default="2000,6000",
        help="the scale curve's many-variable points: variables in all (weights and Adam "
        "slots), comma-separated",
    )
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results.json"))
    p.add_argument("--plot", default=os.path.join(os.path.dirname(__file__), "scale.png"))
    p.add_argument("--replot", action="store_true", help="only redraw the plot from --json")
    p.add_argument(
        "--only-fit",
        action="store_true",
        help="measure only what saving costs fit (blocked per save, throughput; "
        "--fit-rounds interleaved rounds); put it in --json",
    )
    p.add_argument("--fit-rounds", type=int, default=4)
    p.add_argument(
        "--fit-option",
        action="append",
        default=[],
        help="with --only-fit: run this fit option (repeatable; default: all; "
        "no checkpointing always runs)",
    )
    p.add_argument(
        "--only-scale",
        action="store_true",
        help="measure only the scale curve (--scale-sizes, --many-variables); put it in "
        "--json and redraw --plot",
    )
    p.add_argument(
        "--only-mirror",
        action="store_true",
        help="measure only the remote tier (moto's S3 server); put it in --json",
    )
    p.add_argument(
        "--only-incremental",
        action="store_true",
        help="measure only the incremental saves; replace them (and their ratios) in --json",
    )
    args = p.parse_args()
    if args.fit_epochs < 3:
        p.error(
            f"--fit-epochs must be 3 or more (a first save, one or more in between and "
            f"fit's final save are reported apart); got {args.fit_epochs}"
        )
    if args.only_fit or args.only_mirror or args.only_scale:
        root = tempfile.mkdtemp(prefix="tfckpt-bench-", dir=args.dir)

        fresh_dir = fresh_dirs(root)
        if args.only_fit:
            key = "fit"
            measured = bench_fit(
                args.size_mb,
                args.fit_steps or 40,
                args.fit_epochs,
                args.fit_rounds,
                fresh_dir,
                args.fit_option,
            )
        elif args.only_scale:
            key = "scale"
            sizes, many = scale_points(args)
            measured = bench_scale(sizes, args.scale_repeats, fresh_dir, many)
            plot_scale(measured, args.plot)
        else:
            key = "mirror"
            measured = bench_mirror(args.size_mb, args.fit_epochs, args.fit_steps or 20, fresh_dir)
        shutil.rmtree(root, ignore_errors=True)
        report = {}
        if os.path.exists(args.json):
            with open(args.json) as f:
                report = json.load(f)
        report[key] = measured
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps(measured, indent=1))
        return
    if args.only_incremental:
        root = tempfile.mkdtemp(prefix="tfckpt-bench-", dir=args.dir)

        incremental = bench_incremental(args.size_mb, args.incremental_saves, fresh_dirs(root))
        shutil.rmtree(root, ignore_errors=True)
        with open(args.json) as f:
            report = json.load(f)
        report["incremental"] = incremental
        report["ratios"] = {
            k: v for k, v in report["ratios"].items() if not k.startswith("incremental")
        }
        report["ratios"].update(incremental_ratios(incremental))
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps(incremental, indent=1))
        return
    if args.replot:
        with open(args.json) as f:
            plot_scale(json.load(f)["scale"], args.plot)
        return

    root = tempfile.mkdtemp(prefix="tfckpt-bench-", dir=args.dir)
    model = build_model(args.size_mb)
    arrays = state_arrays(model)
    nbytes = sum(a.nbytes for a in arrays)
    r = args.repeats
    results: dict[str, float | None] = {}
    notes: list[str] = []

    fresh = fresh_dirs(root)

    # Saves of every option, interleaved round by round (this VM's write
    # speed drifts, and depends on how long ago the memory a write fills was
    # freed; one option after another would compare moments, not options).
    # The state changes before each round, as in training, so incremental
    # saves share nothing here (they are measured on their own below). Each
    # option keeps its last KEEP.
    raw = fresh("raw")
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    tf_manager = tf.train.CheckpointManager(ckpt, fresh("tf"), max_to_keep=KEEP)
    tf_fsync_dir = fresh("tf_fsync")
    tf_manager_fsync = tf.train.CheckpointManager(ckpt, tf_fsync_dir, max_to_keep=KEEP)

    def keras_callback(name, pattern, **kwargs):
        d = fresh(name)
        callback = keras.callbacks.ModelCheckpoint(os.path.join(d, pattern), **kwargs)
        callback.set_model(model)

        def save(i):
            callback.on_epoch_end(i, {"loss": 1.0})
            old = os.path.join(d, pattern.format(epoch=i + 1 - KEEP))  # keep the last KEEP
            if os.path.exists(old):
                os.remove(old)

        return save, os.path.join(d, pattern)

    mc, h5_pattern = keras_callback("keras_mc", "e{epoch}.weights.h5", save_weights_only=True)
    mck, _ = keras_callback("keras_mc_keras", "e{epoch}.keras")
    bar = keras.callbacks.BackupAndRestore(fresh("keras_bar"))
    bar.set_model(model)
    managers = {
        "tfckpt sync save (fsync, checksums, commit)": {},
        "tfckpt sync save, incremental=False": {"incremental": False},
        "tfckpt sync save, fsync=False": {"fsync": False},
    }
    managers = {
        name: tfckpt.CheckpointManager(fresh(f"tfckpt{i}"), model, keep_last=KEEP, **kwargs)
        for i, (name, kwargs) in enumerate(managers.items())
    }
    options = {
        "raw write+fsync": raw_writer(arrays, raw),
        "tf CheckpointManager.save": lambda i: tf_manager.save(),
        "tf CheckpointManager.save + fsync": lambda i: (
            tf_manager_fsync.save(),
            fsync_tree(tf_fsync_dir),
        ),
        "keras ModelCheckpoint (.weights.h5)": mc,
        "keras ModelCheckpoint (.keras)": mck,
        "keras BackupAndRestore": lambda i: bar.on_epoch_end(i, {}),
        **{name: (lambda i, m=m: m.save(i + 1, epoch=i + 1)) for name, m in managers.items()},
    }
    times: dict[str, list[float]] = {name: [] for name in options}
    for i in range(r + WARMUP):
        perturb(model)
        for name, save in options.items():
            os.sync()
            t0 = time.perf_counter()
            save(i)
            if i >= WARMUP:
                times[name].append(time.perf_counter() - t0)
    results.update({name: statistics.median(t) for name, t in times.items()})

    last_raw = os.path.join(raw, f"state-{r + WARMUP - 1}.bin")
    tfckpt_manager = managers["tfckpt sync save (fsync, checksums, commit)"]
    reads = {
        "raw read": lambda: open(last_raw, "rb").read(),
        "host memcpy (np.copy)": lambda: [a.copy() for a in arrays],
        "tf restore": lambda: ckpt.read(tf_manager.latest_checkpoint),
        "keras load_weights": lambda: model.load_weights(h5_pattern.format(epoch=r + WARMUP)),
        "tfckpt restore (checksums verified)": lambda: tfckpt_manager.restore(),
    }
    times = {name: [] for name in reads}
    for _ in range(r):
        for name, read in reads.items():
            t0 = time.perf_counter()
            read()
            times[name].append(time.perf_counter() - t0)
    results.update({name: statistics.median(t) for name, t in times.items()})
    for manager in managers.values():
        manager.close()

    try:
        for background in (False, True):
            orbax = keras.callbacks.OrbaxCheckpoint(
                fresh(f"orbax_{background}"),
                save_freq="epoch",
                max_to_keep=KEEP,
                save_on_background=background,
            )
            orbax.set_model(model)
            blocked, done = [], []
            for i in range(r + WARMUP):
                os.sync()
                t0 = time.perf_counter()
                orbax.on_epoch_end(i, {"loss": 1.0})
                t1 = time.perf_counter()
                orbax.wait_until_finished()
                if i >= WARMUP:
                    blocked.append(t1 - t0)
                    done.append(time.perf_counter() - t0)
            orbax.on_train_end()
            kind = "async" if background else "sync"
            results[f"keras OrbaxCheckpoint {kind}: blocked"] = statistics.median(blocked)
            results[f"keras OrbaxCheckpoint {kind}: until written"] = statistics.median(done)
        notes.append(
            "Keras OrbaxCheckpoint runs on the TensorFlow backend by converting the state "
            "to NumPy arrays first; it writes without fsync of its own."
        )
    except ImportError as e:
        notes.append(f"Keras OrbaxCheckpoint skipped: {e} (pip install -e '.[bench]')")

    manager = tfckpt.CheckpointManager(
        fresh("tfckpt_async"), model, keep_last=KEEP, async_save=True
    )
    blocked, committed = async_times(manager, r, lambda: perturb(model))
    manager.close()
    results["tfckpt async: fit blocked per save"] = blocked
    results["tfckpt async: until committed"] = committed

    # -- fit, saving every epoch: an epoch ~10x an async save's background time --
    batch = 32
    x = np.random.rand(batch * 8, model.input_shape[-1]).astype("float32")
    y = np.random.rand(batch * 8, 1).astype("float32")
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # trace once
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    step_time = (time.perf_counter() - t0) / 8
    fit_steps = args.fit_steps or max(4, round(10 * committed / step_time))

    arrays = model = ckpt = tf_manager = tf_manager_fsync = bar = tfckpt_manager = None
    keras.backend.clear_session()
    gc.collect()

    fit = bench_fit(args.size_mb, fit_steps, args.fit_epochs, args.fit_rounds, fresh)
    incremental = bench_incremental(args.size_mb, args.incremental_saves, fresh)
    scale = None
    if args.scale:
        sizes, many = scale_points(args)
        scale = bench_scale(sizes, args.scale_repeats, fresh, many)
        plot_scale(scale, args.plot)
    shutil.rmtree(root, ignore_errors=True)

    ref = results["raw write+fsync"]
    memcpy = results["host memcpy (np.copy)"]
    mc_save = results["keras ModelCheckpoint (.weights.h5)"]
    sync = results["tfckpt sync save (fsync, checksums, commit)"]
    ratios = {
        "tfckpt sync / raw write+fsync": sync / ref,
        "tf save + fsync / raw write+fsync": results["tf CheckpointManager.save + fsync"] / ref,
        "tfckpt async blocked / memcpy": blocked / memcpy,
        "tfckpt async blocked / keras ModelCheckpoint": blocked / mc_save,
        "tfckpt sync / keras ModelCheckpoint": sync / mc_save,
        "tfckpt fsync=False / keras ModelCheckpoint": results["tfckpt sync save, fsync=False"]
        / mc_save,
        "tfckpt restore / raw read": results["tfckpt restore (checksums verified)"]
        / results["raw read"],
        "fit throughput async / none": fit["ratio to no checkpointing"]["tfckpt async"]["median"],
        "fit throughput sync / none": fit["ratio to no checkpointing"]["tfckpt sync"]["median"],
        **fit["ratios"],
        **incremental_ratios(incremental),
    }
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"TF {tf.__version__}, Keras {keras.__version__}"
    )
    report = {
        "bytes": nbytes,
        "repeats": r,
        "machine": machine,
        "fit_steps_per_epoch": fit_steps,
        "seconds": results,
        "fit": fit,
        "incremental": incremental,
        "scale": scale,
        "ratios": ratios,
        "notes": notes,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    from report import render  # benchmarks/report.py

    print(render(report))


if __name__ == "__main__":
    main()
