"""What memory freed seconds ago costs a write on this VM, and what tfckpt's
drop of an old checkpoint's page cache before a save wins back.

    python benchmarks/page_cache_reuse.py [--mb 512] [--gap 5] [--rounds 8]

A VM whose balloon device reports free pages (virtio-balloon free page
reporting: bit 5 of /sys/bus/virtio/drivers/virtio_balloon/*/features) gives
memory that stays free for a few seconds back to the host; the next use of it
costs a host fault per page. Two measurements, each `--rounds` times with
`--gap` seconds (an epoch of training) before each:

1. touching `--mb` of fresh memory right after freeing the same amount, and
   after the gap;
2. writing `--mb` to a new file + fsync, keeping the last 3 files as a
   checkpointer would, in rounds that alternate between a plain write and a
   write after dropping the page cache of the oldest file (what
   `CheckpointStore` does before each save, with `fs.drop_cached_files`;
   `raw_write.write_file(recycle_cache=...)`).

Standard library and NumPy only; prints medians and every sample.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
from raw_write import KEEP, write_file


def balloon_reports_free_pages() -> bool | None:
    """Whether a virtio balloon here has free page reporting (None: no balloon)."""
    root = "/sys/bus/virtio/drivers/virtio_balloon"
    try:
        devices = [d for d in os.listdir(root) if d.startswith("virtio")]
    except OSError:
        return None
    for device in devices:
        try:
            with open(os.path.join(root, device, "features")) as f:
                if f.read().strip()[5:6] == "1":
                    return True
        except OSError:
            continue
    return False if devices else None


def touch(nbytes: int) -> float:
    """Seconds to fault in `nbytes` of fresh anonymous memory (one byte a page)."""
    t0 = time.perf_counter()
    a = np.empty(nbytes, np.uint8)
    a[:: os.sysconf("SC_PAGE_SIZE")] = 1
    seconds = time.perf_counter() - t0
    del a
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=512)
    p.add_argument("--gap", type=float, default=5.0, help="seconds before each measurement")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = p.parse_args()
    nbytes = args.mb * 2**20
    print(f"free page reporting: {balloon_reports_free_pages()}")

    memory: dict[str, list[float]] = {"right after freeing": [], f"{args.gap:g} s after": []}
    touch(nbytes)
    for _ in range(args.rounds):
        memory["right after freeing"].append(touch(nbytes))
        time.sleep(args.gap)
        memory[f"{args.gap:g} s after"].append(touch(nbytes))

    directory = tempfile.mkdtemp(prefix="page-cache-", dir=args.dir)
    data = memoryview(np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8))
    writes: dict[str, list[float]] = {"plain": [], "oldest file's cache dropped first": []}
    try:
        for i in range(2 * args.rounds + KEEP):  # the first KEEP fill the directory
            name = list(writes)[i % 2]
            time.sleep(args.gap)
            t0 = time.perf_counter()
            write_file([data], directory, i, KEEP, recycle_cache=name != "plain")
            if i >= KEEP:
                writes[name].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    for title, table in (
        (f"fault in {args.mb} MB of memory", memory),
        (f"write + fsync {args.mb} MB, {args.gap:g} s after the last write", writes),
    ):
        print(title)
        for name, seconds in table.items():
            print(
                f"  {name}: median {statistics.median(seconds):.3f} s, "
                f"all {[round(s, 3) for s in seconds]}"
            )


if __name__ == "__main__":
    main()
