"""KerasTuner searches whose trials resume mid-training after a crash.

Needs the optional extra: `pip install "tfckpt[tuner]"` (KerasTuner and the
`tensorboard` package, which KerasTuner imports when a trial runs).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from tfckpt.callback import CheckpointCallback
from tfckpt.monitor import rank
from tfckpt.run import Run

_INSTALL = 'pip install "tfckpt[tuner]"'
# Set by `resumable`; the tuner's project directory keeps its own layout.
_MARK = "_tfckpt_resumable"
_FIXED = ("directory", "monitor", "mode", "init_from")


def _keras_tuner() -> Any:
    try:
        import keras_tuner
    except ImportError as e:
        raise ImportError(
            f"tfckpt.keras_tuner needs KerasTuner: {_INSTALL} (KerasTuner and tensorboard)."
        ) from e
    if importlib.util.find_spec("tensorboard") is None:
        # KerasTuner 1.4.8 imports it when every trial runs: each would fail.
        raise ImportError(
            "tfckpt.keras_tuner needs the `tensorboard` package, which KerasTuner "
            f"imports when a trial runs (every trial fails without it): {_INSTALL}."
        )
    return keras_tuner


def trial_directory(tuner: Any, trial_id: str, execution: int = 0) -> str:
    """The run directory of one execution of a trial of a `resumable` tuner.

    Execution 0 (the only one unless `executions_per_trial > 1`) writes into
    the trial's own directory (`tuner.get_trial_dir(trial_id)`), beside
    KerasTuner's files; execution N > 0 into its `execution-N` subdirectory.

    Example:

    ```python
    trial = tuner.oracle.get_best_trials(1)[0]
    tfckpt.open(tfckpt.keras_tuner.trial_directory(tuner, trial.trial_id)).best
    ```

    Args:
        tuner: a KerasTuner `Tuner`.
        trial_id: the trial's id (`trial.trial_id`).
        execution: the execution's index within the trial.

    Returns:
        The directory path.
    """
    base = tuner.get_trial_dir(trial_id)
    return base if execution == 0 else os.path.join(base, f"execution-{execution}")


def resumable(tuner: Any, **callback_options: Any) -> Any:
    """Sets up a KerasTuner tuner so that an interrupted search resumes mid-trial.

    Every execution of every trial trains with a `tfckpt.CheckpointCallback`
    in its own directory (`trial_directory`), monitoring the tuner's
    objective with `keep_best >= 1`. Rerun the same script after a crash
    (the tuner built with `overwrite=False`, KerasTuner's default): KerasTuner
    reruns the trial that was running with the same trial id and
    hyperparameters, and tfckpt resumes its training from the newest
    checkpoint, exactly as a plain `fit` resumes; completed trials are not
    rerun. The trial's score is the best epoch over the whole trial (the
    epochs before the crash included), and `tuner.get_best_models()` loads
    each trial's best checkpoint, the one `tfckpt.open(trial_dir).best` names.

    Example:

    ```python
    tuner = keras_tuner.RandomSearch(build_model, objective="val_loss", max_trials=10,
                                     directory="tuning", project_name="mlp")
    tuner = tfckpt.keras_tuner.resumable(tuner, keep_last=2)
    tuner.search(x, y, epochs=20, validation_data=(xv, yv))
    best = tuner.get_best_models(1)[0]
    ```

    Args:
        tuner: a KerasTuner `Tuner` (`RandomSearch`, `BayesianOptimization`,
            `GridSearch` or a subclass; tested with `RandomSearch`) built with a hypermodel
            whose `fit` passes `callbacks` on to `model.fit` (the default).
            Its objective must be a single metric (`"val_loss"` or a
            `keras_tuner.Objective`).
        **callback_options: other arguments of `tfckpt.CheckpointCallback`
            (e.g. `keep_last`, `save_freq`, `async_save`). `directory`,
            `monitor`, `mode` and `init_from` are set here; `keep_best` must
            be at least 1 (default 1).

    Returns:
        The same tuner, set up (calling `resumable` again changes nothing).

    Raises:
        ImportError: KerasTuner or tensorboard is not installed.
    """
    kt = _keras_tuner()
    if not isinstance(tuner, kt.Tuner):
        raise TypeError(
            "`tuner` must be a keras_tuner.Tuner (RandomSearch, BayesianOptimization, "
            f"Hyperband, GridSearch, ...). Received: tuner={tuner!r}"
        )
    if getattr(tuner, _MARK, False):
        return tuner
    if getattr(tuner, "hypermodel", None) is None:
        raise ValueError(
            "`tuner` must have a hypermodel (a model-building function or a "
            "keras_tuner.HyperModel): resumable() checkpoints the fit of each trial. "
            f"Received: tuner.hypermodel=None ({type(tuner).__name__})"
        )
    objective = tuner.oracle.objective
    if type(objective) is not kt.Objective:
        raise ValueError(
            "resumable() needs a tuner whose objective is a single metric "
            "(e.g. objective='val_loss' or keras_tuner.Objective('val_auc', 'max')), "
            f"to keep each trial's best checkpoint. Received: objective={objective!r}"
        )
    fixed = sorted(set(_FIXED) & set(callback_options))
    if fixed:
        raise ValueError(
            f"resumable() sets {', '.join(_FIXED)} itself (a directory per trial, the "
            f"tuner's objective). Received: {', '.join(f'{k}=' for k in fixed)}"
        )
    options = {"keep_best": 1, **callback_options}
    keep_best = options["keep_best"]
    if isinstance(keep_best, bool) or not isinstance(keep_best, int) or keep_best < 1:
        raise ValueError(
            "`keep_best` must be an integer >= 1 with resumable() (each trial's best "
            f"checkpoint is what get_best_models() loads). Received: keep_best={keep_best!r}"
        )
    options.update(monitor=objective.name, mode=objective.direction)
    CheckpointCallback(tuner.project_dir, **options)  # checks the options now, not mid-search
    _Resumable(tuner, options).install()
    setattr(tuner, _MARK, True)
    return tuner


class _Resumable:
    """The hooks: `run_trial` (documented override point of KerasTuner) tells
    which trial runs; `hypermodel.fit` (called once per execution with the
    callbacks it passes to `model.fit`) adds the trial's CheckpointCallback;
    `load_model` loads the best checkpoint tfckpt kept."""

    def __init__(self, tuner: Any, options: dict[str, Any]):
        self.tuner = tuner
        self.options = options
        self.trial: Any = None
        self.execution = 0

    def install(self) -> None:
        tuner, hypermodel = self.tuner, self.tuner.hypermodel
        run_trial, fit, load_model = tuner.run_trial, hypermodel.fit, tuner.load_model

        def run_trial_resumably(trial: Any, *args: Any, **kwargs: Any) -> Any:
            self.trial, self.execution = trial, 0
            try:
                return run_trial(trial, *args, **kwargs)
            finally:
                self.trial = None

        def fit_resumably(hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            if self.trial is None:  # called outside a trial (e.g. by the user)
                return fit(hp, model, *args, **kwargs)
            callbacks = list(kwargs.get("callbacks") or [])
            if any(isinstance(c, CheckpointCallback) for c in callbacks):
                # Fatal: KerasTuner would otherwise record it as a failed trial and go on.
                raise _keras_tuner().errors.FatalValueError(
                    "Do not pass a tfckpt.CheckpointCallback to search() of a resumable "
                    "tuner: every trial would write into its directory. resumable() adds "
                    "one per trial; pass its options to resumable(tuner, ...). Received: "
                    f"callbacks={callbacks!r}"
                )
            directory = trial_directory(tuner, self.trial.trial_id, self.execution)
            self.execution += 1
            callback = CheckpointCallback(directory, **self.options)
            # Last: its epoch-end save sees the logs as KerasTuner scores them
            # (callbacks before it may add metrics, e.g. the objective).
            kwargs["callbacks"] = [*callbacks, callback]
            results = fit(hp, model, *args, **kwargs)
            return _whole_history(results, directory)

        def load_best(trial: Any) -> Any:
            model = load_model(trial)
            best = self.best_checkpoint(trial.trial_id)
            if best is not None:
                best[0].restore(model, best[1])
            return model

        tuner.run_trial = run_trial_resumably
        hypermodel.fit = fit_resumably
        tuner.load_model = load_best

    def best_checkpoint(self, trial_id: str) -> tuple[Run, Any] | None:
        """The best checkpoint of the trial over its executions, and its run."""
        found = []
        execution = 0
        while True:
            directory = trial_directory(self.tuner, trial_id, execution)
            if execution > 0 and not os.path.isdir(directory):
                break
            run = Run(directory)
            if run.best is not None:
                found.append((run, run.best))
            execution += 1
        if not found:
            return None
        metric, mode = self.options["monitor"], self.options["mode"]
        ranked = rank([record for _, record in found], metric, mode)
        return next((run, r) for run, r in found if r is ranked[0]) if ranked else None


def _whole_history(results: Any, directory: str) -> Any:
    """`fit`'s History with the epochs before a resume put back in front, so
    KerasTuner scores the whole trial (a resumed `fit` only returns the
    epochs it ran), as Keras's History would have it: a metric lists the
    epochs that logged it, a non-finite value as NaN."""
    import keras

    if not isinstance(results, keras.callbacks.History):
        return results
    run = Run(directory)
    latest = run.latest
    epochs = run.state(latest).get("history", []) if latest is not None else []
    if len(epochs) <= len(results.epoch):
        return results  # nothing before this fit
    # Each epoch's logs as saved: a metric an epoch did not log is absent
    # (`validation_freq`), a non-finite value is None (JSON).
    history: dict[str, list] = {}
    for logs in epochs:
        for name, value in logs.items():
            if name != "epoch":
                history.setdefault(name, []).append(float("nan") if value is None else value)
    results.history = history
    results.epoch = [logs["epoch"] - 1 for logs in epochs]
    return results
