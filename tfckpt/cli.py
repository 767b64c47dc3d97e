"""The `tfckpt` command line: browse, check, prune and export a run directory.

    tfckpt ls DIR [--json]                  the checkpoints, why each is kept
    tfckpt info DIR [WHICH] [--epoch N]     one checkpoint: metadata, files, variables
    tfckpt diff DIR A B [--json]            per layer, how far the weights moved
    tfckpt verify DIR                       sizes and CRC-32 of every file
    tfckpt prune DIR --keep-last N ...      apply retention rules after the fact
    tfckpt cp SRC[@WHICH] DST [--quiet]     copy a run (or one checkpoint) crash-safely
    tfckpt export DIR OUT --model-from M    write a checkpoint as .keras,
                                            .weights.h5 or a SavedModel
    tfckpt evaluate DIR --model-from M --data D.npz   evaluate each checkpoint as
                                            training goes on (a sidecar)

WHICH is "latest", "best", a step or a checkpoint name. Exit status: 0 ok;
1 a check failed or nothing matched the selection (or the directory is locked
by a writer); 2 a usage error, a missing directory or one that is not a run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from typing import Any


class _UsageError(Exception):
    """Exit status 2: the command cannot run as given."""


def _open(directory: str) -> Any:
    import tensorflow as tf

    from tfckpt.run import open_run
    from tfckpt.store.layout import is_run_entry

    run = open_run(directory)  # FileNotFoundError for a missing directory
    # (A remote run is read through its local cache: that is listed.)
    entries = [e.rstrip("/") for e in tf.io.gfile.listdir(run.directory)]
    is_run = any(is_run_entry(e) for e in entries)
    if not is_run:
        raise _UsageError(f"{directory!r} is not a tfckpt run directory (no checkpoints in it).")
    return run


def _which(text: str | None) -> Any:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def _row(record: Any, shared: int | None = None) -> dict[str, Any]:
    row = {
        "name": record.name,
        "step": record.step,
        "epoch": record.epoch,
        "batch": record.batch,
        "metrics": dict(record.metrics),
        "size": record.size,
        "time": record.time,
        "path": record.path,
        "kept": record.kept,
    }
    if shared is not None:
        row["shared"] = shared  # bytes hard-linked with other checkpoints
    return row


def _is(record: Any, other: Any) -> bool:
    return other is not None and record.name == other.name


def _saved(record: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.time))


def _ls(args: argparse.Namespace) -> int:
    from tfckpt.browse.display import table_text

    run = _open(args.directory)
    records, problems = run.checkpoints, run.problems
    best = run.best
    if args.json:
        rows = [{**_row(r, run.shared_bytes(r)), "best": _is(r, best)} for r in records]
        rows += [{"name": p.name, "problem": p.reason} for p in problems]
        print(json.dumps(rows, indent=1))
        return 0
    if not records and not problems:
        print(f"{args.directory}: no checkpoints")
        return 0
    shared = [run.shared_bytes(r) for r in records]
    print("\n".join(table_text(records, run.monitor, problems, shared)))
    return 0


def _info(args: argparse.Namespace) -> int:

    from tfckpt.browse.display import human_size
    from tfckpt.browse.variables import format_variables
    from tfckpt.errors import CheckpointNotFoundError

    run = _open(args.directory)
    candidates = run.select(_which(args.which), epoch=args.epoch)
    if not candidates:
        raise CheckpointNotFoundError(f"{args.directory!r} holds no committed checkpoint yet.")
    record = candidates[0]
    records = run.checkpoints
    record = next((r for r in records if r.name == record.name), record)  # with `kept`
    best, latest = run.best, records[-1]
    marks = [m for m, other in (("best", best), ("latest", latest)) if _is(record, other)]
    saved = run.variables(record)
    variables = [v.as_dict() for v in saved]
    files = {f: dict(entry) for f, entry in sorted(record.manifest["files"].items())}
    shared = run.shared_bytes(record)
    if args.json:
        info = {**_row(record, shared), "best": _is(record, best), "latest": _is(record, latest)}
        info.update(files=files, variables=variables)
        print(json.dumps(info, indent=1))
        return 0
    metrics = "  ".join(
        f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(record.metrics.items())
    )
    fields = [
        ("path", record.path),
        ("step", record.step),
        ("epoch", record.epoch),
        ("batch", record.batch),
        ("saved", _saved(record)),
        ("size", f"{human_size(record.size)} ({record.size} bytes)"),
        (
            "disk",
            f"{human_size(record.size - shared)} own, {human_size(shared)} shared "
            "with other checkpoints (hard links)",
        ),
        ("kept", record.kept or ""),
        ("metrics", metrics),
        ("files", ", ".join(f"{f} ({human_size(e['size'])})" for f, e in files.items())),
    ]
    print(record.name + (f"  ({', '.join(marks)})" if marks else ""))
    for key, value in fields:
        print(f"  {key:<8} {value}")
    print(f"variables ({len(variables)}):")
    for line in format_variables(saved):
        print(line)
    return 0


def _diff(args: argparse.Namespace) -> int:
    import dataclasses

    changes = _open(args.directory).diff(_which(args.a), _which(args.b))
    if args.json:
        rows = [dataclasses.asdict(c) for c in changes]
        print(json.dumps({"a": changes.a, "b": changes.b, "layers": rows}, indent=1))
    else:
        print(repr(changes))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from tfckpt.run import verify

    _open(args.directory)
    results = verify(args.directory)
    for name, problem in results:
        print(f"{name}: {'OK' if problem is None else 'DAMAGED: ' + problem}")
    bad = sum(problem is not None for _, problem in results)
    print(f"{len(results) - bad} intact, {bad} damaged")
    return 1 if bad else 0


def _prune(args: argparse.Namespace) -> int:
    from tfckpt.browse.display import human_size

    run = _open(args.directory)
    report = run.prune(
        keep_last=args.keep_last,
        keep_best=args.keep_best,
        keep_every_n_epochs=args.keep_every_n_epochs,
        keep_every_n_hours=args.keep_every_n_hours,
        dry_run=args.dry_run,
    )
    if args.json:
        out = {
            "dry_run": report.dry_run,
            "deleted": [_row(r) for r in report.deleted],
            "kept": [_row(r) for r in report.kept],
            "damaged": [{"name": p.name, "problem": p.reason} for p in report.damaged],
            "bytes_freed": report.bytes_freed,
        }
        print(json.dumps(out, indent=1))
        return 0
    dry = report.dry_run
    verb, keep = ("would delete", "keep") if dry else ("deleted", "kept")
    for r in report.deleted:
        print(f"{verb:<12} {r.name}  step {r.step}  epoch {r.epoch}  {human_size(r.size)}")
    for r in report.kept:
        print(f"{keep:<12} {r.name}  step {r.step}  epoch {r.epoch}  ({r.kept})")
    for p in report.damaged:
        print(f"{'left alone':<12} {p.name}  DAMAGED: {p.reason}")
    print(
        f"{verb} {len(report.deleted)}, {keep} {len(report.kept)}: "
        f"{human_size(report.bytes_freed)} {'would be ' * dry}freed"
    )
    return 0


def _cp(args: argparse.Namespace) -> int:
    from tfckpt.browse.copying import copy

    report = copy(args.source, args.destination, quiet=args.quiet)
    print(
        f"{len(report.copied)} copied, {len(report.skipped)} already there, "
        f"{len(report.damaged)} damaged in the source (not copied)"
    )
    return 1 if report.damaged else 0


def _load_model(spec: str) -> Any:
    """A model from `PATH.keras` (its architecture) or `PATH.py:FUNCTION`."""
    import keras

    if spec.endswith(".keras"):
        if not os.path.isfile(spec):
            raise _UsageError(f"--model-from: no such file {spec!r}.")
        return keras.saving.load_model(spec, compile=False)
    path, _, name = spec.rpartition(":")
    if not path.endswith(".py") or not name.isidentifier():
        raise _UsageError(
            f"--model-from must be PATH.keras or PATH.py:FUNCTION. Received: {spec!r}"
        )
    if not os.path.isfile(path):
        raise _UsageError(f"--model-from: no such file {path!r}.")
    module_spec = importlib.util.spec_from_file_location("_tfckpt_model_from", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    function = getattr(module, name, None)
    if not callable(function):
        raise _UsageError(f"--model-from: {path!r} has no function {name!r}.")
    model = function()
    if not isinstance(model, keras.Model):
        raise _UsageError(
            f"--model-from: {spec}() must return a keras.Model. Received: {type(model).__name__}"
        )
    return model


def _export(args: argparse.Namespace) -> int:
    run = _open(args.directory)
    if os.path.lexists(args.out) and not args.overwrite:
        raise _UsageError(f"{args.out!r} already exists. Pass --overwrite to replace it.")
    model = _load_model(args.model_from)
    record = run.export(
        model,
        args.out,
        _which(args.which),
        epoch=args.epoch,
        format=args.format,
        overwrite=args.overwrite,
    )
    print(f"exported {record.name} (step {record.step}, epoch {record.epoch}) to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """`SidecarEvaluator` on DIR; the model compiled (a .keras file keeps its
    compile config; a .py function compiles it), the data an .npz of x and y."""
    import keras
    import numpy as np

    from tfckpt.serve.sidecar import SidecarEvaluator

    if args.model_from.endswith(".keras") and os.path.isfile(args.model_from):
        model = keras.saving.load_model(args.model_from)
    else:
        model = _load_model(args.model_from)
    if not getattr(model, "compiled", False):
        raise _UsageError(
            f"--model-from: {args.model_from!r} gives a model that is not compiled; "
            "evaluate needs its loss and metrics."
        )
    with np.load(args.data, allow_pickle=False) as arrays:
        if "x" not in arrays:
            raise _UsageError(f"--data: {args.data!r} has no array 'x' (and 'y').")
        data = (arrays["x"], arrays["y"]) if "y" in arrays else (arrays["x"],)
    evaluator = SidecarEvaluator(
        model,
        data if len(data) == 2 else data[0],
        args.directory,
        steps=args.steps,
        which=args.which,
        log_dir=args.log_dir,
        max_evaluations=args.max_evaluations,
        timeout=args.timeout,
    )
    for row in evaluator.start():
        values = "  ".join(f"{k}={v:.6g}" for k, v in row["metrics"].items() if v is not None)
        print(f"{row['name']}  step {row['step']}  epoch {row['epoch']}  {values}", flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfckpt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("ls", help="list the checkpoints of a run directory")
    ls.add_argument("directory")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_ls)

    info = sub.add_parser("info", help="one checkpoint: metadata, files, variables")
    info.add_argument("directory")
    info.add_argument("which", nargs="?", help="latest (default), best, a step or a name")
    info.add_argument("--epoch", type=int, help="the checkpoint at the end of epoch N")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)

    diff = sub.add_parser("diff", help="per layer, how far the weights moved between two")
    diff.add_argument("directory")
    diff.add_argument("a", help="latest, best, a step or a name")
    diff.add_argument("b", help="latest, best, a step or a name")
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    diff.set_defaults(func=_diff)

    ver = sub.add_parser("verify", help="check sizes and checksums of every checkpoint")
    ver.add_argument("directory")
    ver.set_defaults(func=_verify)

    prune = sub.add_parser(
        "prune", help="delete the checkpoints no rule keeps (the newest always stays)"
    )
    prune.add_argument("directory")
    prune.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest")
    prune.add_argument("--keep-best", type=int, metavar="K", help="keep the K best (monitor)")
    prune.add_argument("--keep-every-n-epochs", type=int, metavar="N")
    prune.add_argument("--keep-every-n-hours", type=float, metavar="H")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    prune.add_argument("--json", action="store_true", help="machine-readable output")
    prune.set_defaults(func=_prune)

    cp = sub.add_parser("cp", help="copy a run or one checkpoint into another run directory")
    cp.add_argument("source", help="SRC or SRC@WHICH (best, latest, STEP, epoch=N, a name)")
    cp.add_argument("destination", help="DST: a new or existing run directory (any filesystem)")
    cp.add_argument("--quiet", action="store_true", help="no line per checkpoint")
    cp.set_defaults(func=_cp)

    export = sub.add_parser(
        "export", help="write a checkpoint as .keras, .weights.h5 or a SavedModel"
    )
    export.add_argument("directory")
    export.add_argument("out", help="OUT.keras, OUT.weights.h5, or a directory name (SavedModel)")
    export.add_argument(
        "--model-from",
        required=True,
        metavar="PATH.keras|PATH.py:FUNCTION",
        help="the architecture: a .keras file, or a Python function returning the model",
    )
    export.add_argument("--which", help="best (default), latest, a step or a name")
    export.add_argument("--epoch", type=int, help="the checkpoint at the end of epoch N")
    export.add_argument("--format", choices=["tf_saved_model"], help="force a SavedModel")
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    export.set_defaults(func=_export)

    evaluate = sub.add_parser(
        "evaluate", help="evaluate each checkpoint as training goes on (a sidecar)"
    )
    evaluate.add_argument("directory")
    evaluate.add_argument(
        "--model-from",
        required=True,
        metavar="PATH.keras|PATH.py:FUNCTION",
        help="the compiled model: a .keras file, or a Python function returning it",
    )
    evaluate.add_argument("--data", required=True, metavar="PATH.npz", help="arrays x and y")
    evaluate.add_argument("--steps", type=int, help="batches per evaluation (default: all)")
    evaluate.add_argument("--which", choices=["all", "best"], default="all")
    evaluate.add_argument("--log-dir", help="where results go (default: DIR-eval)")
    evaluate.add_argument("--max-evaluations", type=int, metavar="N")
    evaluate.add_argument(
        "--timeout", type=float, metavar="S", help="end after S seconds without a checkpoint"
    )
    evaluate.set_defaults(func=_evaluate)
    return parser


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow and Keras without their start-up lines above our output.

    TensorFlow logs its start-up (absl's preamble, oneDNN, CUDA, the CPU's
    instructions) before its log level is read, so `TF_CPP_MIN_LOG_LEVEL`
    alone does not silence it: standard error is held back during the import
    and shown only if the import fails. A `TF_CPP_MIN_LOG_LEVEL` of the user's
    own wins: then nothing is held back.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import keras
        import tensorflow

        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    stderr = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(stderr, 2)
            held.seek(0)
            sys.stderr.flush()
            os.write(2, held.read())
            raise
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    _import_tensorflow_quietly()
    import tensorflow as tf

    from tfckpt.errors import CheckpointError, CheckpointNotFoundError

    def fail(status: int, error: BaseException) -> int:
        text = getattr(error, "message", None) or str(error)
        print(f"tfckpt: {' '.join(text.split())}", file=sys.stderr)
        return status

    try:
        return args.func(args)
    except (_UsageError, FileNotFoundError, FileExistsError) as e:
        return fail(2, e)
    except (CheckpointNotFoundError, CheckpointError, tf.errors.OpError, OSError) as e:
        return fail(1, e)
    except (ValueError, TypeError) as e:  # an option's value (e.g. --keep-last -1)
        return fail(2, e)


if __name__ == "__main__":
    sys.exit(main())
