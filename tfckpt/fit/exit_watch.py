"""Wrapping what `model.fit` calls, for the time of one fit; hearing every
way out of it.

Keras's `fit` has no try/finally around its loop: when an exception leaves it
(Ctrl-C, an error in a callback or in the train step, an OOM), `on_train_end`
is never called. Everything `fit` calls after `on_train_begin` goes through a
few attributes: the train step, validation (`evaluate`), the metric reset, the
optimizer's finalize and the callback list's hooks. `ExitWatch` wraps those for
the duration of one fit, so the callback hears of an exception passing through
any of them and can put back what it installed before the exception reaches
the user.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import tensorflow as tf

# How a data iterator says an epoch is over: Keras catches these inside fit.
_NOT_AN_EXIT = (StopIteration, tf.errors.OutOfRangeError)

_CALLBACK_LIST_HOOKS = (
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_train_end",
)


def replace(
    owner: Any, name: str, new: Callable[..., Any], undo: list[Any]
) -> Callable[[], None] | None:
    """Sets `owner.name = new` (an instance attribute) and puts on `undo` (and
    returns) the call that puts back what was there, if `new` is still in
    place then. `None` for an object that takes no instance attributes."""
    own = getattr(owner, "__dict__", None)
    if own is None:
        return None
    had_own, previous = name in own, own.get(name)
    try:
        setattr(owner, name, new)
    except (AttributeError, TypeError):
        return None

    def put_back() -> None:
        if own.get(name) is new:
            if had_own:
                setattr(owner, name, previous)
            else:
                own.pop(name, None)

    undo.append(put_back)
    return put_back


class ExitWatch:
    """Calls `on_exit(error)` once, when an exception leaves a wrapped call
    made by `fit` itself (`fit_code`) and so goes on out of `fit`.

    The same attributes are also called from elsewhere (a callback may call
    `model.evaluate` and catch what it raises): only calls from `fit`'s own
    frame count. Each wrap puts its undo on `undo` (a list the owner pops
    from the end), so wrappers installed later (on the same attribute) come
    off first.
    """

    def __init__(
        self, on_exit: Callable[[BaseException], None], undo: list[Any], fit_code: Any = None
    ):
        self._on_exit = on_exit
        self._undo = undo
        self.fit_code = fit_code
        self.fired = False

    def _fire(self, error: BaseException) -> None:
        if not self.fired:
            self.fired = True
            self._on_exit(error)

    def wrap(self, owner: Any, name: str, *, once: bool = False) -> None:
        """Wraps `owner.name` (an instance attribute for the time of one fit).

        `once`: the wrapper takes itself off after its first call.
        """
        original = getattr(owner, name, None)
        if not callable(original):
            return

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if once and put_back is not None:
                put_back()
            try:
                return original(*args, **kwargs)
            except _NOT_AN_EXIT:
                raise
            except BaseException as e:
                # `once` wraps are called by the callback list inside fit,
                # which catches nothing.
                caller = sys._getframe(1).f_code
                if once or self.fit_code is None or caller is self.fit_code:
                    self._fire(e)
                raise

        put_back = replace(owner, name, guarded, self._undo)

    def watch_fit(self, model: Any, callback_list: Any, after: list[Any]) -> None:
        """Wraps what `fit` calls after `on_train_begin`; `after` are the
        callbacks whose `on_train_begin` is still to run in this one."""
        for name in ("train_function", "evaluate", "reset_metrics"):
            self.wrap(model, name)
        if callback_list is not None:
            for name in _CALLBACK_LIST_HOOKS:
                self.wrap(callback_list, name)
        for callback in after:
            self.wrap(callback, "on_train_begin", once=True)
