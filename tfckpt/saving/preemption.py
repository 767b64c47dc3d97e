"""Preemption notices (SIGTERM and friends) turned into a flag that the
training loop checks at every step boundary.

A signal handler must not save: it runs between two Python bytecodes of the
main thread, possibly in the middle of TF's own bookkeeping. It only records
the signal; the callback (or `CheckpointManager.preemption_point`) saves at
the next step boundary and then stops.
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Iterable
from typing import Any

# TF's PreemptionCheckpointHandler exits with 42 after its save, and cluster
# schedulers are commonly told to restart on it; we use the same code.
PREEMPTION_EXIT_CODE = 42


def validate_signals(name: str, signals: Any) -> tuple[int, ...]:
    """The signal numbers of a `preemption_signals` argument."""
    if signals is None:
        return ()
    if isinstance(signals, (int, signal.Signals)):
        signals = (signals,)
    try:
        numbers = tuple(signal.Signals(s) for s in signals)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be None or a sequence of signals (e.g. "
            f"(signal.SIGTERM, signal.SIGUSR1)). Received: {name}={signals!r}"
        ) from None
    bad = [s.name for s in numbers if s in (signal.SIGKILL, signal.SIGSTOP)]
    if bad:
        raise ValueError(f"`{name}` cannot include {bad}: no process can catch them.")
    return numbers


def validate_exit_code(name: str, code: Any) -> int | None:
    if code is None:
        return None
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
        raise ValueError(
            f"`{name}` must be None (return from training) or an exit status "
            f"0..255. Received: {name}={code!r}"
        )
    return code


class SignalWatch:
    """Records the first of `signals` received while installed."""

    def __init__(self, signals: Iterable[int]):
        self.signals = tuple(signals)
        self.received: int | None = None
        self.handled = False  # a save-and-stop acted on `received`
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        if not self.signals or self._previous:
            return bool(self._previous)
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "tfckpt: preemption signals can only be watched from the main thread; "
                "training runs in another one, so a SIGTERM ends it without a save.",
                stacklevel=3,
            )
            return False
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum

    def uninstall(self) -> int | None:
        """Puts the previous handlers back; returns a signal received but not
        acted on, for the caller to deliver to them (`deliver`)."""
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        pending = self.received if previous and not self.handled else None
        self.received, self.handled = None, False
        return pending


def deliver(signum: int | None) -> None:
    """Raises a signal that arrived too late to be acted on (after the last
    step) again, now that the previous handler is back: a default SIGTERM
    still ends the process, a scheduler's handler still runs."""
    if signum is not None:
        signal.raise_signal(signum)
