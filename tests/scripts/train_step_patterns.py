"""The keras.io patterns that override `Model.train_step`, trained through
`fit` with one `CheckpointCallback` and nothing else tfckpt-specific.

    python train_step_patterns.py PATTERN DIR --out OUT.json
        [--save-freq N] [--kill-at-epoch E] [--kill-at-step K]

PATTERN: gan (a generator and a discriminator, an optimizer each, beside the
unused one `compile()` makes), wgan_gp (three critic steps per batch with a
gradient penalty), distillation (a frozen teacher attribute, extra `compile`
arguments), vae (encoder and decoder submodels, `Mean` trackers, sampling
from a `SeedGenerator`), ema (`Adam(use_ema=True)` under Dropout).

`--kill-at-epoch E` SIGKILLs the process as epoch E begins; `--kill-at-step K`
just before training step K (mid-epoch). OUT gets a digest of every variable
of the model and of every optimizer it holds, and the epochs this process ran.
"""

import argparse
import hashlib
import json
import os
import signal

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import tfckpt
from tfckpt.store.tf_checkpoint import optimizers

p = argparse.ArgumentParser()
p.add_argument("pattern")
p.add_argument("directory")
p.add_argument("--out", required=True)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--save-freq", default="epoch")
p.add_argument("--kill-at-epoch", type=int, default=None)
p.add_argument("--kill-at-step", type=int, default=None)
args = p.parse_args()

keras.utils.set_random_seed(3)
tf.config.experimental.enable_op_determinism()
F, LATENT = 8, 4
rng = np.random.default_rng(0)
x = rng.normal(size=(64, F)).astype("float32")
y = (x[:, :3].sum(axis=1) > 0).astype("float32")[:, None]


def dense_net(name, inputs, units, out, activation=None):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(out, activation=activation),
        ],
        name=name,
    )


class GAN(keras.Model):
    """keras.io "DCGAN: overriding train_step", at a toy size."""

    def __init__(self, discriminator, generator):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.seed_generator = keras.random.SeedGenerator(1337)

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn
        self.d_loss_metric = keras.metrics.Mean(name="d_loss")
        self.g_loss_metric = keras.metrics.Mean(name="g_loss")

    @property
    def metrics(self):
        return [self.d_loss_metric, self.g_loss_metric]

    def latent(self, n):
        return keras.random.normal((n, LATENT), seed=self.seed_generator)

    def train_step(self, real):
        n = ops.shape(real)[0]
        combined = ops.concatenate([self.generator(self.latent(n)), real], axis=0)
        labels = ops.concatenate([ops.ones((n, 1)), ops.zeros((n, 1))], axis=0)
        labels += 0.05 * keras.random.uniform(ops.shape(labels), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            d_loss = self.loss_fn(labels, self.discriminator(combined))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
        with tf.GradientTape() as tape:
            fake = self.generator(self.latent(n))
            g_loss = self.loss_fn(ops.zeros((n, 1)), self.discriminator(fake))
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
        self.d_loss_metric.update_state(d_loss)
        self.g_loss_metric.update_state(g_loss)
        return {"d_loss": self.d_loss_metric.result(), "g_loss": self.g_loss_metric.result()}


class WGANGP(GAN):
    """keras.io "WGAN-GP overriding Model.train_step": d_steps critic steps
    per batch, each with a gradient penalty."""

    d_steps = 3

    def train_step(self, real):
        n = ops.shape(real)[0]
        for _ in range(self.d_steps):
            with tf.GradientTape() as tape:
                fake = self.generator(self.latent(n))
                d_cost = ops.mean(self.discriminator(fake)) - ops.mean(self.discriminator(real))
                alpha = keras.random.uniform((n, 1), seed=self.seed_generator)
                mixed = real + alpha * (fake - real)
                with tf.GradientTape() as inner:
                    inner.watch(mixed)
                    critic = self.discriminator(mixed)
                norm = ops.sqrt(ops.sum(ops.square(inner.gradient(critic, mixed)), axis=1))
                d_loss = d_cost + 10.0 * ops.mean((norm - 1.0) ** 2)
            grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
            self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
        with tf.GradientTape() as tape:
            g_loss = -ops.mean(self.discriminator(self.generator(self.latent(n))))
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
        self.d_loss_metric.update_state(d_loss)
        self.g_loss_metric.update_state(g_loss)
        return {"d_loss": self.d_loss_metric.result(), "g_loss": self.g_loss_metric.result()}


class Distiller(keras.Model):
    """keras.io "Knowledge distillation", with a frozen teacher."""

    def __init__(self, student, teacher):
        super().__init__()
        self.teacher = teacher
        self.student = student

    def compile(
        self, optimizer, metrics, student_loss_fn, distillation_loss_fn, alpha, temperature
    ):
        super().compile(optimizer=optimizer, metrics=metrics)
        self.student_loss_fn = student_loss_fn
        self.distillation_loss_fn = distillation_loss_fn
        self.alpha = alpha
        self.temperature = temperature

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, allow_empty=False):
        teacher_pred = self.teacher(x, training=False)
        student_loss = self.student_loss_fn(y, y_pred)
        distillation_loss = self.distillation_loss_fn(
            ops.softmax(teacher_pred / self.temperature, axis=1),
            ops.softmax(y_pred / self.temperature, axis=1),
        ) * (self.temperature**2)
        return self.alpha * student_loss + (1 - self.alpha) * distillation_loss

    def call(self, x):
        return self.student(x)


class Sampling(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        mean, log_var = inputs
        eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * eps


class VAE(keras.Model):
    """keras.io "Variational AutoEncoder", at a toy size."""

    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self):
        return [self.total_loss_tracker, self.kl_loss_tracker]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            mean, log_var, z = self.encoder(data)
            reconstruction = self.decoder(z)
            rec = ops.mean(ops.sum(ops.square(data - reconstruction), axis=1))
            kl = -0.5 * (1 + log_var - ops.square(mean) - ops.exp(log_var))
            kl = ops.mean(ops.sum(kl, axis=1))
            total = rec + kl
        grads = tape.gradient(total, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.total_loss_tracker.update_state(total)
        self.kl_loss_tracker.update_state(kl)
        return {"loss": self.total_loss_tracker.result(), "kl_loss": self.kl_loss_tracker.result()}


def build():
    """The model, what fit takes, and the metric to monitor."""
    if args.pattern in ("gan", "wgan_gp"):
        model = (GAN if args.pattern == "gan" else WGANGP)(
            dense_net("discriminator", F, 16, 1), dense_net("generator", LATENT, 16, F)
        )
        model.compile(
            keras.optimizers.Adam(1e-3),
            keras.optimizers.Adam(1e-3),
            keras.losses.BinaryCrossentropy(from_logits=True),
        )
        return model, (x,), "g_loss"
    if args.pattern == "distillation":
        teacher = dense_net("teacher", F, 32, 2)
        teacher.trainable = False
        model = Distiller(dense_net("student", F, 8, 2), teacher)
        model.compile(
            keras.optimizers.Adam(1e-2),
            [keras.metrics.SparseCategoricalAccuracy()],
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            keras.losses.KLDivergence(),
            alpha=0.1,
            temperature=3,
        )
        return model, (x, y), "loss"
    if args.pattern == "vae":
        inputs = keras.Input((F,))
        h = keras.layers.Dense(16, activation="relu")(inputs)
        mean, log_var = keras.layers.Dense(2)(h), keras.layers.Dense(2)(h)
        encoder = keras.Model(inputs, [mean, log_var, Sampling()([mean, log_var])], name="encoder")
        model = VAE(encoder, dense_net("decoder", 2, 16, F))
        model.compile(keras.optimizers.Adam(1e-2))
        return model, (x,), "loss"
    if args.pattern == "ema":
        model = keras.Sequential(
            [
                keras.Input((F,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        model.compile(keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.9), "bce")
        return model, (x, y), "loss"
    raise SystemExit(f"unknown pattern {args.pattern!r}")


class Kill(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        if args.kill_at_epoch is not None and epoch == args.kill_at_epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_begin(self, batch, logs=None):
        self.steps += 1
        if args.kill_at_step is not None and self.steps == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)


class Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.run = []

    def on_epoch_begin(self, epoch, logs=None):
        self.run.append(epoch)


model, data, monitor = build()
save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
callback = tfckpt.CheckpointCallback(args.directory, monitor=monitor, save_freq=save_freq)
kill, epochs = Kill(), Epochs()
model.fit(*data, batch_size=8, epochs=args.epochs, verbose=0, callbacks=[callback, epochs, kill])
h = hashlib.sha256()
variables = list(model.weights) + [v for o in optimizers(model) for v in o.variables]
for v in variables:
    h.update(np.ascontiguousarray(v.numpy()).tobytes())
with open(args.out, "w") as f:
    json.dump({"digest": h.hexdigest(), "variables": len(variables), "epochs_run": epochs.run}, f)
