"""How a checkpoint's tensors are split into data files, so later saves can
share the files whose bytes did not change.

TF writes one data file per shard its sharding callback returns, in that
order, as `ckpt.data-0000i-of-0000N`. With the same variables and the same
split, a tensor whose bytes did not change lands in a file identical to the
previous checkpoint's file of the same name, which the store then hard-links
instead of keeping the new copy (`store.CheckpointStore`). Which files are
identical is decided by a hash of their bytes, never by `trainable`:
BatchNorm statistics are not trainable and change.

Only the split uses what is known to change at every step: what the
checkpoint lists under the compiled optimizer (its slots and step, and the
weights it trains where TF's object graph reaches them through it first, as
for Sequential and functional models) and the save counter go into one file,
as TF's own save would write them. Split into one file per tensor they could
never be shared, and each file costs write time (a full-training save of
512 MB in 34 files took 2.4x the time of one with `incremental=False`).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tfckpt.store.background import lower_thread_priority

# A tensor this large gets a data file of its own; smaller ones are packed, in
# checkpoint-key order (a layer's variables are neighbours), into files of
# about this size. Small enough that a changing scalar rewrites little beside
# it, large enough that a model with thousands of variables has few files.
PACK_BYTES = 4 * 2**20

# Checkpoint keys of what changes at every train step: the compiled
# optimizer (saved as "optimizer" by tfckpt, and by most tf.train.Checkpoint
# users) with the weights listed under it, and the checkpoint's save counter.
CHANGING_EVERY_STEP = ("optimizer/", "save_counter/")


class ShareableShards(tf.train.experimental.ShardingCallback):
    """What changes at every step in one data file; of the rest, one data
    file per large tensor and small tensors packed in key order. Where the
    rest is smaller than `PACK_BYTES`, everything goes into one file.

    The split depends only on the checkpoint keys, shapes and dtypes, so it is
    the same at every save of the same model and optimizer.
    """

    @property
    def description(self) -> str:
        return (
            "tfckpt: the optimizer's state in one file; of the rest, one file per tensor "
            f"of {PACK_BYTES} bytes or more, smaller ones packed"
        )

    def __call__(self, shardable_tensors: Sequence[tf.train.experimental.ShardableTensor]):
        ordered = sorted(shardable_tensors, key=lambda t: (t.checkpoint_key, str(t.slice_spec)))
        changing = [t for t in ordered if t.checkpoint_key.startswith(CHANGING_EVERY_STEP)]
        rest = [t for t in ordered if not t.checkpoint_key.startswith(CHANGING_EVERY_STEP)]
        if sum(_nbytes(t) for t in rest) < PACK_BYTES:
            return [_one_file(ordered)]  # too little apart from it to share
        shards: list[dict] = [_one_file(changing)] if changing else []
        pack: list = []
        pack_bytes = 0
        for t in rest:
            size = _nbytes(t)
            if size >= PACK_BYTES:
                shards.append(_one_file([t]))
                continue
            pack.append(t)
            pack_bytes += size
            if pack_bytes >= PACK_BYTES:
                shards.append(_one_file(pack))
                pack, pack_bytes = [], 0
        if pack or not shards:
            shards.append(_one_file(pack))
        return shards


def _one_file(tensors: Sequence[tf.train.experimental.ShardableTensor]) -> dict:
    """TF's shard: checkpoint key -> slice spec -> tensor."""
    shard: dict = {}
    for t in tensors:
        shard.setdefault(t.checkpoint_key, {})[t.slice_spec] = t.tensor
    return shard


def _nbytes(t: tf.train.experimental.ShardableTensor) -> int:
    if t.dtype == tf.string or t.shape.num_elements() is None:
        return 0  # the object graph and other strings: small, packed
    return t.shape.num_elements() * t.dtype.size


class InBackground(tf.train.experimental.ShardingCallback):
    """Wraps a split for TF's background writer thread (async saves): the first
    call lowers that thread's CPU priority, so the write yields to training."""

    def __init__(self, split: tf.train.experimental.ShardingCallback | None = None):
        self.split = split

    @property
    def description(self) -> str:
        return f"tfckpt background write ({self.split.description if self.split else 'one file'})"

    def __call__(self, shardable_tensors):
        lower_thread_priority()
        if self.split is not None:
            return self.split(shardable_tensors)
        return [_one_file(shardable_tensors)]


OPTIONS = tf.train.CheckpointOptions(experimental_sharding_callback=ShareableShards())
ASYNC_OPTIONS = tf.train.CheckpointOptions(
    experimental_sharding_callback=InBackground(ShareableShards()), enable_async=True
)
ASYNC_FULL_OPTIONS = tf.train.CheckpointOptions(
    experimental_sharding_callback=InBackground(), enable_async=True
)
