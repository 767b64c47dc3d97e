"""Host memory an async save holds, against a sync one.

    python benchmarks/async_memory.py            # ~1 minute

Trains the benchmark model (`compare.build_model`, 240 MiB of weights + Adam
state) for one epoch, then saves three times with a `tfckpt.CheckpointManager`
(sync, then async, each in a fresh process), training an epoch after each
save, and prints the process's resident memory (RSS) after each step and its
growth over the trained model's. TF's async helper keeps a host copy of every
variable: at the save call it shares the variables' buffers, and the training
steps that follow copy each buffer they update (copy-on-write).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def probe(mode: str) -> None:
    import numpy as np
    from compare import build_model

    import tfckpt

    model = build_model(227)
    x = np.random.rand(256, model.input_shape[-1]).astype("float32")
    y = np.random.rand(256, 1).astype("float32")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    base = rss_mib()
    print(f"{mode}: trained model {base:.0f} MiB RSS")
    with tempfile.TemporaryDirectory() as directory:
        manager = tfckpt.CheckpointManager(
            directory, model, async_save=mode == "async", keep_last=2
        )
        for i in range(3):
            manager.save(i + 1)
            after_save = rss_mib() - base
            model.fit(x, y, batch_size=32, epochs=1, verbose=0)
            manager.wait()
            print(
                f"{mode}: save {i + 1}: +{after_save:.0f} MiB at the save call, "
                f"+{rss_mib() - base:.0f} MiB after the next epoch"
            )
        manager.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("sync", "async"):
        probe(sys.argv[1])
        return
    for mode in ("sync", "async"):
        subprocess.run([sys.executable, __file__, mode], check=True)


if __name__ == "__main__":
    main()
