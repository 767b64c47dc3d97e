"""tfckpt: crash-safe checkpointing for Keras 3 on TensorFlow.

```python
import tfckpt
cb = tfckpt.CheckpointCallback("runs/exp1", monitor="val_loss", keep_last=3, keep_best=1)
model.fit(x, y, validation_data=(xv, yv), epochs=50, callbacks=[cb])
```
"""

__version__ = "0.1.0"

from tfckpt import retention
from tfckpt.browse.copying import CopyReport, copy
from tfckpt.callback import CheckpointCallback
from tfckpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointReadError,
    CheckpointWriteError,
    CommittedWithError,
    DirectoryLockedError,
    IncompatibleCheckpointError,
    NoIntactCheckpointError,
)
from tfckpt.manager import CheckpointManager
from tfckpt.observers import CheckpointObserver, TensorBoardObserver
from tfckpt.run import Run, restore, verify
from tfckpt.run import open_run as open
from tfckpt.serve.serving_export import ServingExport
from tfckpt.serve.sidecar import SidecarEvaluator, read_evaluations
from tfckpt.serve.watch import Watcher, watch
from tfckpt.stateful import StatefulCallback
from tfckpt.store.layout import CheckpointRecord

__all__ = [
    "CheckpointCallback",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "CheckpointObserver",
    "CheckpointRecord",
    "CheckpointWriteError",
    "CommittedWithError",
    "CopyReport",
    "DirectoryLockedError",
    "IncompatibleCheckpointError",
    "NoIntactCheckpointError",
    "Run",
    "ServingExport",
    "SidecarEvaluator",
    "StatefulCallback",
    "TensorBoardObserver",
    "copy",
    "Watcher",
    "open",
    "read_evaluations",
    "restore",
    "retention",
    "verify",
    "watch",
]
