"""What the fault-injection script and its tests share: the libc calls the
shim (tests/faults/inject.c) counts, in its order, and the model they save."""

import keras

# The shim's operations, by index (see inject.c).
OPS = [
    "open",
    "write",
    "fsync",
    "rename",
    "remove",
    "listdir",
    "stat",
    "mkdir",
    "close",
    "read",
    "link",
]


def build():
    """The model every fault scenario saves. Its frozen 1024x1024 kernels
    (4 MiB) have data files of their own, which incremental saves hard-link:
    every scenario shares files."""
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(1024, trainable=False),
            keras.layers.Dense(1024, trainable=False),
            keras.layers.Dense(1024, trainable=False),
            keras.layers.Dense(16),
            keras.layers.Dense(1),
        ]
    )
