"""tfckpt: crash-safe checkpointing for Keras 3 on TensorFlow.

```python
import tfckpt
cb = tfckpt.CheckpointCallback("runs/exp1", monitor="val_loss", keep_last=3, keep_best=1)
model.fit(x, y, validation_data=(xv, yv), epochs=50, callbacks=[cb])
```
"""

__version__ = "0.1.0"

from tfckpt import retention
from tfckpt.callback import CheckpointCallback
from tfckpt.copying import CopyReport, copy
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
from tfckpt.serving import ServingExport
from tfckpt.sidecar import SidecarEvaluator, read_evaluations
from tfckpt.stateful import StatefulCallback
from tfckpt.store import CheckpointRecord
from tfckpt.watch import Watcher, watch

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
