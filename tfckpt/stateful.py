"""`StatefulCallback`: the protocol of callbacks whose state travels with
every checkpoint."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class StatefulCallback(Protocol):
    """A callback whose state is saved with every checkpoint and restored on
    resume. Implement both methods on your own `keras.callbacks.Callback`.

    ```python
    class Counter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1

        def get_checkpoint_state(self):
            return {"batches": self.batches}

        def set_checkpoint_state(self, state):
            self.batches = state["batches"]
    ```

    The state is a dict of JSON-able values and NumPy arrays. It is set at the
    first epoch begin of the resumed `fit`, after every callback's
    `on_train_begin` has run.
    """

    def get_checkpoint_state(self) -> dict[str, Any]: ...

    def set_checkpoint_state(self, state: dict[str, Any]) -> None: ...
