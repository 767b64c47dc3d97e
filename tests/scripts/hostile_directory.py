"""Hostile-directory fuzz (issue 24): run directories with random hostile
entries, and every entry point that reads or writes a run, in one process.

    python hostile_directory.py WORKDIR SEED CASES

For each case it copies a run of three checkpoints, plants one to three
hostile entries drawn from `HOSTILE` (symlinks and hard links to a canary tree
outside, links to /dev/zero, FIFOs, deep / huge / wrongly typed / truncated
JSON, names with `..`, a decompression bomb, ...), then runs: the command line
(`ls`, `info`, `verify`), `open()` (checkpoints, history, plot, lineage),
`verify`, `restore`, `export`, `watch`, `SidecarEvaluator`, `copy` out of it,
`copy` into it, a resuming `fit` with a `ServingExport` (into a serving
directory with hostile versions of its own), and `prune`.

It prints one JSON line per case: the entries planted and `failures`, each an
entry point that let a raw Python error out (anything but a tfckpt error) or a
broken promise (the canary tree outside changed, an intact checkpoint beside
the hostile entries no longer listed or restored). A hang is the caller's
timeout; `faulthandler` then prints where it hung.
"""

import support  # isort: skip

import contextlib
import faulthandler
import hashlib
import io
import json
import os
import random
import shutil
import sys
import traceback
import warnings
import zlib
from pathlib import Path

import keras
import numpy as np

import tfckpt
from tfckpt import cli
from tfckpt.store.layout import manifest_checksum

keras.utils.disable_interactive_logging()
FILES = (
    "manifest.json",
    "ckpt.index",
    "ckpt.data-00000-of-00001",
    "state.json",
    "state-arrays.npz",
)
HOSTILE_VALUES = (
    None, -1, 0, 2**70, 1.5, float("inf"), True, "x", "../../outside/precious.txt",
    [], [1, "a", None], {}, {"size": "big"}, "\x00", "ckpt-000001",
)  # fmt: skip


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        h.update(folder.encode())
        for name in sorted(files):
            h.update(name.encode())
            h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


def fit_run(directory: Path, epochs: int, seed: int) -> None:
    model = support.make_model(seed=seed)
    x, y = support.make_data(64, seed=seed)
    callback = tfckpt.CheckpointCallback(str(directory), monitor="loss", keep_last=None)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[callback])


# ---- hostile entries: each plants one, into one of `names` (checkpoints not
# touched so far) or outside the checkpoints, and returns the ones it touched --


def _replace(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _target(rng, run, names):
    name = rng.choice(names)
    return name, run / name / rng.choice(FILES)


def _rewrite_manifest(run, name, change):
    path = run / name / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest["checksum"] = manifest_checksum(manifest)  # as a hostile author would
    path.write_text(json.dumps(manifest))


def _set_file(run, name, fname, data):
    """Replaces a file of a checkpoint and its manifest entry, consistently."""
    (run / name / fname).write_bytes(data)

    def record(manifest):
        manifest["files"][fname] = {"size": len(data), "crc32": zlib.crc32(data)}

    _rewrite_manifest(run, name, record)


def link_leftover(rng, run, canary, names):
    name = rng.choice([".trash-ckpt-000009-0badc0de", ".tmp-ckpt-000004-deadbeef"])
    (run / name).symlink_to(rng.choice([canary, canary / "sub"]), target_is_directory=True)
    return set()


def link_checkpoint_entry(rng, run, canary, names):
    outside = canary / "other-run" / "ckpt-000002"
    if rng.random() < 0.5:
        (run / "ckpt-000007").symlink_to(outside, target_is_directory=True)
        return set()
    name = rng.choice(names)
    _replace(run / name)
    (run / name).symlink_to(outside, target_is_directory=True)
    return {name}


def link_file(rng, run, canary, names):
    name, path = _target(rng, run, names)
    _replace(path)
    outside = canary / "other-run" / name / path.name
    path.symlink_to(rng.choice([outside, canary / "precious.txt", Path("/dev/zero")]))
    return {name}


def hard_link_file(rng, run, canary, names):
    name, path = _target(rng, run, names)
    _replace(path)
    os.link(rng.choice([canary / "other-run" / name / path.name, canary / "precious.txt"]), path)
    return {name}


def fifo_file(rng, run, canary, names):
    name, path = _target(rng, run, names)
    _replace(path)
    os.mkfifo(path)
    return {name}


def folder_for_file(rng, run, canary, names):
    name, path = _target(rng, run, names)
    _replace(path)
    (path / "inside").mkdir(parents=True)
    return {name}


def truncate_file(rng, run, canary, names):
    name, path = _target(rng, run, names)
    os.truncate(path, rng.randrange(path.stat().st_size))
    return {name}


def garbage_file(rng, run, canary, names):
    name, path = _target(rng, run, names)
    path.write_bytes(rng.randbytes(rng.choice([0, 1, 100, 5000])))
    return {name}


def huge_file(rng, run, canary, names):
    name, path = _target(rng, run, names)
    os.truncate(path, 4 << 30)  # sparse: 4 GiB that cost no disk
    return {name}


def deep_json(rng, run, canary, names):
    name = rng.choice(names)
    fname = rng.choice(["manifest.json", "state.json"])
    text = (rng.choice(["[", '{"a":']) * 100_000).encode()
    if fname == "manifest.json":
        (run / name / fname).write_bytes(text)
    else:
        _set_file(run, name, fname, text)
    return {name}


def wrong_type_manifest(rng, run, canary, names):
    name = rng.choice(names)

    def change(manifest):
        where = manifest
        if rng.random() < 0.4:
            where = manifest["files"]
            if rng.random() < 0.6:
                where = where[rng.choice(sorted(where))]
        where[rng.choice(sorted(where))] = rng.choice(HOSTILE_VALUES)

    _rewrite_manifest(run, name, change)
    return {name}


def wrong_type_state(rng, run, canary, names):
    name = rng.choice(names)
    state = json.loads((run / name / "state.json").read_text())
    key = rng.choice(sorted(state)) if isinstance(state, dict) and state else "x"
    state[key] = rng.choice(HOSTILE_VALUES)
    if rng.random() < 0.3:
        state = rng.choice(HOSTILE_VALUES)
    _set_file(run, name, "state.json", json.dumps(state).encode())
    return {name}


def dotdot_names(rng, run, canary, names):
    name = rng.choice(names)
    outside = canary / "precious.txt"
    data = outside.read_bytes()
    relative = os.path.relpath(outside, run / name)

    def change(manifest):
        key = rng.choice(["files", "prefix", "supersedes", "parent"])
        if key == "files":
            manifest["files"][relative] = {"size": len(data), "crc32": zlib.crc32(data)}
        elif key == "parent":
            manifest["parent"] = {"directory": str(canary), "name": "../precious.txt"}
        else:
            manifest[key] = rng.choice([relative, "../ckpt-000001", "/etc/passwd"])

    _rewrite_manifest(run, name, change)
    return {name}


def bomb_archive(rng, run, canary, names):
    name = rng.choice(names)
    bomb = io.BytesIO()
    np.savez_compressed(bomb, a0=np.zeros(256 << 20, dtype=np.uint8))
    _set_file(run, name, "state-arrays.npz", bomb.getvalue())
    return {name}


def hostile_top_level(rng, run, canary, names):
    entry = run / rng.choice([".lock", ".finished", "checkpoint", ".readers"])
    _replace(entry)
    kind = rng.choice(["symlink", "hardlink", "fifo", "folder", "devzero", "deep"])
    if kind == "symlink":
        entry.symlink_to(canary / rng.choice(["precious.txt", "sub", "missing"]))
    elif kind == "hardlink":
        os.link(canary / "precious.txt", entry)
    elif kind == "fifo":
        os.mkfifo(entry)
    elif kind == "folder":
        (entry / "x").mkdir(parents=True)
    elif kind == "devzero":
        entry.symlink_to("/dev/zero")
    else:
        entry.write_text("[" * 100_000)
    return set()


def stray_entries(rng, run, canary, names):
    (run / "ckpt-000008").write_text("not a folder")
    (run / "ckpt-000009").mkdir()
    os.mkfifo(run / "ckpt-000010")
    (run / ".tmp-draft").mkdir()
    (run / ".tmp-draft" / "mine.txt").write_text("mine")
    return set()


HOSTILE = [
    link_leftover, link_checkpoint_entry, link_file, hard_link_file, fifo_file,
    folder_for_file, truncate_file, garbage_file, huge_file, deep_json,
    wrong_type_manifest, wrong_type_state, dotdot_names, bomb_archive,
    hostile_top_level, stray_entries,
]  # fmt: skip


def hostile_serving_dir(base: Path, canary: Path) -> None:
    base.mkdir()
    (base / "100").symlink_to(canary / "sub", target_is_directory=True)
    (base / "101").mkdir()
    (base / "101" / "saved_model.pb").write_bytes(b"hand-made")
    os.mkfifo(base / "102")
    (base / "103").symlink_to(canary / "precious.txt")


# ---- one case ------------------------------------------------------------------


def run_case(work: Path, template: Path, good: Path, canary: Path, seed: int) -> dict:
    keras.backend.clear_session()  # hundreds of cases: no models piling up
    rng = random.Random(seed)
    case = work / f"case-{seed}"
    run = case / "run"
    shutil.copytree(template, run, symlinks=True)
    planted = rng.sample(HOSTILE, rng.randint(1, 3))
    touched: set[str] = set()
    for plant in planted:
        # Each into a checkpoint untouched so far (or outside the checkpoints).
        untouched = sorted({p.name for p in template.glob("ckpt-*")} - touched)
        if not untouched:
            break
        touched |= plant(rng, run, canary, untouched)
    intact = sorted({p.name for p in template.glob("ckpt-*")} - touched)
    before = tree_digest(canary)
    failures: list[str] = []
    outcomes: dict[str, str] = {}  # entry point -> "ok" or the tfckpt error it raised
    x, y = support.make_data(64, seed=1)

    def attempt(label, call):
        out = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(out):
                warnings.simplefilter("ignore")
                result = call()
            outcomes[label] = "ok"
            return result
        except tfckpt.CheckpointError as e:
            outcomes[label] = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
            return None
        except Exception:
            failures.append(f"{label}: {traceback.format_exc()}")
            return None

    def command(*argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = cli.main([*argv])
        if status not in (0, 1) or "Error" in err.getvalue().split(":")[0]:
            raise AssertionError(f"exit {status}: {err.getvalue()}")

    def plot(view):
        try:
            view.plot("loss")
        except ValueError as e:
            # A history as written (by a hostile author) without that metric.
            if not str(e).startswith("No epoch of run"):
                raise

    def reachable():
        listed = [r.name for r in tfckpt.open(run).checkpoints]
        missing = [name for name in intact if name not in listed]
        if missing:
            raise AssertionError(f"intact checkpoints not listed: {missing} (listed {listed})")

    model = support.make_model(seed=1)
    for argv in (["ls", run], ["info", run], ["verify", run]):
        attempt(" ".join(map(str, argv[:1])), lambda argv=argv: command(*map(str, argv)))
    attempt("reachable", reachable)
    view = attempt("open", lambda: tfckpt.open(run))
    if view is not None:
        for name in ("checkpoints", "problems", "latest", "best", "history", "lineage"):
            attempt(f"open().{name}", lambda name=name: getattr(view, name))
        attempt("open().plot", lambda: plot(view))
    attempt("verify()", lambda: tfckpt.verify(run))

    def restore():
        record = tfckpt.restore(model, run)
        if intact and record.name not in {p.name for p in run.glob("ckpt-*")}:
            raise AssertionError(f"restored {record.name}, not a checkpoint of the run")

    if intact:
        restore_call = restore
    else:
        restore_call = lambda: tfckpt.restore(model, run)  # noqa: E731
    attempt("restore", restore_call)
    attempt("export", lambda: tfckpt.export(model, run, case / "best.weights.h5"))
    attempt("watch", lambda: list(tfckpt.watch(run, timeout=0.3, poll_interval=0.1)))
    attempt(
        "SidecarEvaluator",
        lambda: tfckpt.SidecarEvaluator(
            model, (x, y), run, log_dir=case / "eval", timeout=0.3, poll_interval=0.1
        ).start(),
    )
    attempt("copy out", lambda: tfckpt.copy(run, case / "copied", quiet=True))
    attempt("copy in", lambda: tfckpt.copy(good, run, which="latest", quiet=True))
    attempt("reachable after copy in", reachable)

    serving = case / "serving"
    hostile_serving_dir(serving, canary)

    def resume():
        resumed = support.make_model(seed=1)
        callback = tfckpt.CheckpointCallback(
            str(run),
            monitor="loss",
            observers=[tfckpt.ServingExport(serving, when="every", keep=1)],
        )
        resumed.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[callback])

    attempt("resuming fit", resume)
    attempt("prune", lambda: tfckpt.open(run).prune(keep_last=1, dry_run=False))
    attempt("ls after", lambda: command("ls", str(run)))
    if tree_digest(canary) != before:
        failures.append("the canary tree outside the run changed")
    shutil.rmtree(case, ignore_errors=True)
    return {
        "seed": seed,
        "planted": [p.__name__ for p in planted],
        "outcomes": outcomes,
        "failures": failures,
    }


def main() -> None:
    work, first, cases = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    faulthandler.dump_traceback_later(float(os.environ.get("HANG_AFTER", "240")), exit=True)
    template, good, canary = work / "template", work / "good", work / "outside"
    fit_run(template, 3, seed=0)
    fit_run(good, 1, seed=5)
    (canary / "sub").mkdir(parents=True)
    (canary / "precious.txt").write_text("keep me")
    (canary / "sub" / "data.bin").write_bytes(os.urandom(256))
    shutil.copytree(template, canary / "other-run")
    for seed in range(first, first + cases):
        faulthandler.cancel_dump_traceback_later()
        faulthandler.dump_traceback_later(float(os.environ.get("HANG_AFTER", "240")), exit=True)
        print(json.dumps(run_case(work, template, good, canary, seed)), flush=True)


if __name__ == "__main__":
    main()
