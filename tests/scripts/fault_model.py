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


def build(shared: bool = True):
    """The model the fault scenarios save. Its frozen 1024x1024 kernels (4 MiB)
    have data files of their own, which incremental saves hard-link, so a save
    shares files. `shared=False`: a small model whose saves share nothing,
    for the scenarios that do not write (restore, prune), at a fraction of
    the cost."""
    if not shared:
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
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


def compiled(shared: bool = True):
    """`build(shared)`, compiled as the fault scenarios train it."""
    model = build(shared)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model
