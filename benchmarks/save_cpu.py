"""Whether a save waits for the disk or works the CPU.

    python benchmarks/save_cpu.py            # ~1 minute

Saves the benchmark model (`compare.build_model`, 240 MiB of weights + Adam
state) 6 times each with a raw write+fsync, TF's `Checkpoint.write` (no
fsync) and tfckpt's sync save, interleaved, dirty pages flushed before each,
and prints per save: its wall time, the CPU time of this process, and the
machine's user, kernel and I/O-wait time from `/proc/stat` (Linux). Where
the process's CPU time is most of the wall time, a background thread or
process can hide little of the save from training that keeps every core
busy: the work has to run on those cores.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf
from compare import build_model, perturb, raw_writer, state_arrays

import tfckpt


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_times() -> list[float]:
    """user, nice, system, idle, iowait, ... in seconds (all CPUs)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return [int(v) / os.sysconf("SC_CLK_TCK") for v in fields]


def main() -> None:
    model = build_model(227)
    with tempfile.TemporaryDirectory() as root:
        manager = tfckpt.CheckpointManager(os.path.join(root, "tfckpt"), model, keep_last=3)
        raw = raw_writer(state_arrays(model), tempfile.mkdtemp(dir=root), keep=3)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        saves = {
            "raw write+fsync": raw,
            "tf Checkpoint.write (no fsync)": lambda i: checkpoint.write(
                os.path.join(root, f"tf{i}", "ckpt")
            ),
            "tfckpt sync save": lambda i: manager.save(i + 1),
        }
        print("save | wall s | process CPU s | machine user s | kernel s | I/O wait s")
        for i in range(6):
            perturb(model)
            for name, save in saves.items():
                os.sync()
                before, cpu0, t0 = machine_times(), process_cpu(), time.perf_counter()
                save(i)
                wall, cpu = time.perf_counter() - t0, process_cpu() - cpu0
                d = [b - a for a, b in zip(before, machine_times())]
                print(f"{name} | {wall:.3f} | {cpu:.3f} | {d[0]:.2f} | {d[2]:.2f} | {d[4]:.2f}")
        manager.close()


if __name__ == "__main__":
    main()
