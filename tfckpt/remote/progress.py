"""Progress of a transfer: a bar with bytes and rate in a terminal (tqdm),
one line per checkpoint otherwise."""

from __future__ import annotations

import sys
import time
from typing import IO


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class TransferProgress:
    """Counts the bytes of one checkpoint's transfer.

    Args:
        label: what moves, e.g. `"ckpt-000007 -> s3://bucket/exp1"`.
        total: bytes expected.
        quiet: nothing at all.
        stream: where to write (default stderr); a bar only when it is a
            terminal and tqdm is installed.
    """

    def __init__(self, label: str, total: int, *, quiet: bool = False, stream: IO | None = None):
        self.label, self.total, self.quiet = label, total, quiet
        self.stream = stream or sys.stderr
        self.moved = 0
        self._start = time.monotonic()
        self._bar = None
        if not quiet and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(
                    total=total,
                    desc=label,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    file=self.stream,
                    leave=True,
                )

    def __call__(self, n: int) -> None:
        self.moved += n
        if self._bar is not None:
            self._bar.update(n)

    def done(self, outcome: str) -> None:
        """Ends the bar, or prints the checkpoint's one line."""
        if self._bar is not None:
            self._bar.set_postfix_str(outcome, refresh=False)
            self._bar.close()
            return
        if self.quiet:
            return
        seconds = time.monotonic() - self._start
        rate = self.moved / seconds if seconds > 0 else 0.0
        print(
            f"tfckpt: {self.label}: {outcome} ({_size(self.moved)} in {seconds:.1f} s, "
            f"{_size(rate)}/s)",
            file=self.stream,
            flush=True,
        )
