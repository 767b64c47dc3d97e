"""One worker of a 2-worker MultiWorkerMirroredStrategy custom training loop
on 127.0.0.1, checkpointing with tfckpt.CheckpointManager.

    python mwms_train.py DIR --index I --ports P0,P1 --steps N --save-every K
                         [--kill-at-step S] [--term-at-step S] --out OUT.json

Prints `restored S` and `step S` lines (flushed). `--kill-at-step` SIGKILLs
this worker before step S; `--term-at-step` sends worker 1 a SIGTERM
before step S (worker 0 must save at the same step).
"""

import argparse
import json
import os
import signal

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("--index", type=int, required=True)
p.add_argument("--ports", required=True)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--save-every", type=int, default=4)
p.add_argument("--kill-at-step", type=int, default=None)
p.add_argument("--term-at-step", type=int, default=None)
p.add_argument("--out", required=True)
args = p.parse_args()

ports = args.ports.split(",")
os.environ["TF_CONFIG"] = json.dumps(
    {
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": args.index},
    }
)
# Not support's preamble: docs/distributed.md runs this script by hand, with
# no tests/ on the Python path.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfckpt  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()
keras.utils.set_random_seed(5)
rng = np.random.default_rng(0)
x = rng.normal(size=(512, 10)).astype("float32")
y = (x[:, :3].sum(axis=1) > 0).astype("float32")[:, None]
GLOBAL_BATCH = 32

with strategy.scope():
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)

manager = tfckpt.CheckpointManager(
    args.directory, model, optimizer, keep_last=2, preemption_signals=(signal.SIGTERM,)
)
record = manager.restore()
start = record.step if record is not None else 0
print(f"restored {start if record is not None else -1}", flush=True)

# Step s always trains on the same global batch, wherever the run restarted.
ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(GLOBAL_BATCH).skip(start)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
batches = iter(strategy.experimental_distribute_dataset(ds.with_options(options)))


@tf.function
def train_step(batch):
    def step(features, labels):
        with tf.GradientTape() as tape:
            logits = model(features, training=True)
            loss = tf.nn.compute_average_loss(
                tf.nn.sigmoid_cross_entropy_with_logits(labels, logits),
                global_batch_size=GLOBAL_BATCH,
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return strategy.reduce("SUM", strategy.run(step, args=batch), axis=None)


for s in range(start, args.steps):
    if s == args.kill_at_step:
        os.kill(os.getpid(), signal.SIGKILL)
    if s == args.term_at_step and args.index == 1:  # one worker gets the notice
        os.kill(os.getpid(), signal.SIGTERM)
    loss = float(train_step(next(batches)))
    print(f"step {s + 1}", flush=True)
    # Saves if a preemption signal reached any worker, then exits with 42.
    manager.preemption_point(s + 1, metrics={"loss": loss})
    if (s + 1) % args.save_every == 0:
        manager.save(s + 1, metrics={"loss": loss})
manager.close()
weights = [w.numpy().tolist() for w in model.weights]
with open(args.out, "w") as f:
    json.dump({"weights": weights, "step": int(optimizer.iterations.numpy())}, f)
