"""tfckpt: crash-safe checkpointing for Keras 3 on TensorFlow.

```python
import tfckpt
cb = tfckpt.CheckpointCallback("runs/exp1", monitor="val_loss", keep_last=3, keep_best=1)
model.fit(x, y, validation_data=(xv, yv), epochs=50, callbacks=[cb])
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public names and the module each lives in (`module:name` where the name
# differs). They are imported when first used, so the `tfckpt` command starts
# without TensorFlow's import (and can quiet its start-up lines), and
# `import tfckpt` costs nothing until a name is used.
_PUBLIC = {
    "CheckpointCallback": "tfckpt.callback",
    "CheckpointManager": "tfckpt.manager",
    "Run": "tfckpt.run",
    "open": "tfckpt.run:open_run",
    "restore": "tfckpt.run",
    "export": "tfckpt.run",
    "verify": "tfckpt.run",
    "CheckpointRecord": "tfckpt.store.layout",
    "copy": "tfckpt.browse.copying",
    "CopyReport": "tfckpt.browse.copying",
    "watch": "tfckpt.serve.watch",
    "Watcher": "tfckpt.serve.watch",
    "SidecarEvaluator": "tfckpt.serve.sidecar",
    "read_evaluations": "tfckpt.serve.sidecar",
    "ServingExport": "tfckpt.serve.serving_export",
    "CheckpointObserver": "tfckpt.observers",
    "TensorBoardObserver": "tfckpt.observers",
    "StatefulCallback": "tfckpt.stateful",
    "CheckpointError": "tfckpt.errors",
    "CheckpointNotFoundError": "tfckpt.errors",
    "CheckpointReadError": "tfckpt.errors",
    "CheckpointWriteError": "tfckpt.errors",
    "CommittedWithError": "tfckpt.errors",
    "DamagedCheckpointError": "tfckpt.errors",
    "DirectoryLockedError": "tfckpt.errors",
    "IncompatibleCheckpointError": "tfckpt.errors",
    "NoIntactCheckpointError": "tfckpt.errors",
}
_SUBMODULES = ("retention", "observers", "errors", "stateful", "keras_tuner", "compat")

__all__ = [
    "CheckpointCallback",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointObserver",
    "CheckpointReadError",
    "CheckpointRecord",
    "CheckpointWriteError",
    "CommittedWithError",
    "CopyReport",
    "DamagedCheckpointError",
    "DirectoryLockedError",
    "IncompatibleCheckpointError",
    "NoIntactCheckpointError",
    "Run",
    "ServingExport",
    "SidecarEvaluator",
    "StatefulCallback",
    "TensorBoardObserver",
    "Watcher",
    "compat",
    "copy",
    "export",
    "open",
    "read_evaluations",
    "restore",
    "retention",
    "verify",
    "watch",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        module, _, attribute = _PUBLIC[name].partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"tfckpt.{name}")
    else:
        raise AttributeError(f"module 'tfckpt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC, *_SUBMODULES})


if TYPE_CHECKING:  # what static tools (type checkers, the API docs) see
    from tfckpt import compat, retention
    from tfckpt.browse.copying import CopyReport, copy
    from tfckpt.callback import CheckpointCallback
    from tfckpt.errors import (
        CheckpointError,
        CheckpointNotFoundError,
        CheckpointReadError,
        CheckpointWriteError,
        CommittedWithError,
        DamagedCheckpointError,
        DirectoryLockedError,
        IncompatibleCheckpointError,
        NoIntactCheckpointError,
    )
    from tfckpt.manager import CheckpointManager
    from tfckpt.observers import CheckpointObserver, TensorBoardObserver
    from tfckpt.run import Run, export, restore, verify
    from tfckpt.run import open_run as open
    from tfckpt.serve.serving_export import ServingExport
    from tfckpt.serve.sidecar import SidecarEvaluator, read_evaluations
    from tfckpt.serve.watch import Watcher, watch
    from tfckpt.stateful import StatefulCallback
    from tfckpt.store.layout import CheckpointRecord
