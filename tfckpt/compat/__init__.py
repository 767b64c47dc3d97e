"""Drop-ins for TensorFlow's checkpoint APIs: change the import, keep the
code, and get tfckpt's commits, checksums and fallback underneath.

```python
from tfckpt.compat import CheckpointManager  # was: tf.train.CheckpointManager
```
"""

from tfckpt.compat.checkpoint_manager import CheckpointManager

__all__ = ["CheckpointManager"]
