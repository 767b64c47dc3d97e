"""A run directory from someone else is untrusted input: no name, link or
special file in it makes tfckpt read or write outside it, hang, or run out of
memory, and the intact checkpoints beside a hostile entry stay reachable.

Each test here is one of the verified defects of issue 24, built as a hostile
user would build it (real links, FIFOs and files on disk)."""

import hashlib
import io
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from support import (
    cache,
    cached_bytes,
    fill,
    page_cache_droppable,
    run_script,
    script_env,
    small_model,
)

import tfckpt
from tfckpt.errors import CheckpointWriteError, DamagedCheckpointError, NoIntactCheckpointError
from tfckpt.store.layout import manifest_checksum


def tree_digest(root):
    """Every path, kind and byte under `root`: equal digests, untouched tree."""
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        h.update(folder.encode())
        for name in sorted(files):
            path = os.path.join(folder, name)
            h.update(name.encode())
            h.update(open(path, "rb").read())
    return h.hexdigest()


@pytest.fixture
def canary(tmp_path):
    """A tree outside the run directory, which nothing may change."""
    root = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "precious.txt").write_text("keep me")
    (root / "sub" / "data.bin").write_bytes(os.urandom(256))
    return root


def two_checkpoints(directory):
    with tfckpt.CheckpointManager(str(directory), small_model(), keep_last=None) as manager:
        manager.save(epoch=1)
        manager.save(epoch=2)
    return tfckpt.open(directory).checkpoints


def rewrite_manifest(record, change):
    """Changes a committed manifest as a hostile author would: checksum redone."""
    path = os.path.join(record.directory, "manifest.json")
    manifest = json.loads(open(path).read())
    change(manifest)
    manifest["checksum"] = manifest_checksum(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


def test_only_leftovers_of_tfckpt_s_own_names_are_removed_and_never_through_a_link(
    tmp_path, canary
):
    run = tmp_path / "run"
    two_checkpoints(run)
    before = tree_digest(canary)
    (run / ".trash-ckpt-000009-0badc0de").symlink_to(canary, target_is_directory=True)
    (run / ".tmp-ckpt-000003-deadbeef").symlink_to(canary / "sub", target_is_directory=True)
    (run / ".tmp-draft").mkdir()
    (run / ".tmp-draft" / "notes.txt").write_text("mine")
    (run / ".trash-keep").mkdir()
    (run / ".tmp-ckpt-000003-0123abcd").mkdir()  # a real leftover of an interrupted save
    (run / ".tmp-ckpt-000003-0123abcd" / "ckpt.index").write_bytes(b"partial")
    # A writer takes the directory (a resumed fit, a manager, `tfckpt cp` into it).
    with tfckpt.CheckpointManager(str(run), small_model(), keep_last=None) as manager:
        manager.save(epoch=3)
    assert tree_digest(canary) == before
    assert (run / ".tmp-draft" / "notes.txt").read_text() == "mine"
    assert (run / ".trash-keep").is_dir()
    assert (run / ".trash-ckpt-000009-0badc0de").is_symlink()  # not ours: left alone
    assert not (run / ".tmp-ckpt-000003-0123abcd").exists()
    assert [r.epoch for r in tfckpt.open(run).checkpoints] == [1, 2, 3]


def test_lock_and_finished_marker_are_never_written_through_a_link(tmp_path, canary):
    run = tmp_path / "run"
    two_checkpoints(run)
    before = tree_digest(canary)
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(canary / "precious.txt")
    with pytest.raises(CheckpointWriteError, match=r"\.lock.*it is a symbolic link\. Nothing"):
        tfckpt.open(run).prune(keep_last=1, dry_run=False)
    with pytest.raises(tfckpt.CheckpointError, match=r"\.lock.*it is a symbolic link"):
        tfckpt.CheckpointManager(str(run), small_model())
    assert tree_digest(canary) == before
    assert len(tfckpt.open(run).checkpoints) == 2  # nothing deleted either

    (run / ".lock").unlink()
    (run / ".finished").unlink(missing_ok=True)
    (run / ".finished").symlink_to(canary / "finished-here")  # dangling
    with tfckpt.CheckpointManager(str(run), small_model(), keep_last=None) as manager:
        assert not os.path.lexists(run / ".finished")  # a writer took it: removed
        manager.save(epoch=3)
    assert not (canary / "finished-here").exists()
    assert (run / ".finished").is_file() and not (run / ".finished").is_symlink()
    assert tree_digest(canary) == before


def test_a_checkpoint_entry_that_is_a_link_is_never_read_renamed_or_deleted(tmp_path):
    other = tmp_path / "other"
    theirs = two_checkpoints(other)
    run = tmp_path / "run"
    ours = two_checkpoints(run)
    (run / "ckpt-000005").symlink_to(other / theirs[0].name, target_is_directory=True)
    view = tfckpt.open(run)
    assert [r.name for r in view.checkpoints] == [r.name for r in ours]
    assert [p.name for p in view.problems] == ["ckpt-000005"]
    assert "symbolic link" in view.problems[0].reason
    with pytest.warns(UserWarning, match="skipping ckpt-000005 .*a symbolic link"):
        assert tfckpt.restore(small_model(), str(run)).name == ours[-1].name
    view.prune(keep_last=1, dry_run=False)
    assert (run / "ckpt-000005").is_symlink()
    assert all(problem is None for _, problem in tfckpt.verify(other))
    assert [r.name for r in tfckpt.open(other).checkpoints] == [r.name for r in theirs]


CLI = [sys.executable, "-m", "tfckpt.cli"]


def run_bounded(*command, timeout=120):
    """A reader in its own process, so that a hang fails the test, not the suite."""
    return subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=script_env(),
    )


WATCH = """
import sys, tfckpt
print([r.name for r in tfckpt.watch(sys.argv[1], timeout=2)])
"""


def test_a_fifo_in_place_of_a_manifest_hangs_nothing(tmp_path):
    run = tmp_path / "run"
    first, second = two_checkpoints(run)
    (run / second.name / "manifest.json").unlink()
    os.mkfifo(run / second.name / "manifest.json")
    listed = run_bounded(*CLI, "ls", run)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].startswith(first.name)
    assert f"{second.name} DAMAGED" in " ".join(listed.stdout.split())
    assert "FIFO" in listed.stdout
    checked = run_bounded(*CLI, "verify", run)
    assert checked.returncode == 1 and "1 intact, 1 damaged" in checked.stdout
    watched = run_bounded(sys.executable, "-c", WATCH, run)
    assert watched.returncode == 0 and watched.stdout.strip() == repr([first.name])


def test_dropping_an_old_checkpoint_s_cache_never_goes_through_a_link_or_a_fifo(tmp_path, canary):
    """A save drops the page cache of the third-newest checkpoint's data files;
    a link there (the checkpoint itself, or a data file) reaches nothing
    outside, and a FIFO named as a data file does not hang the save."""
    if not page_cache_droppable(tmp_path):
        pytest.skip("this filesystem keeps its pages cached (tmpfs) or fincore is missing")
    outside = canary / "sub" / "data.bin"
    model = small_model()

    def save(manager, epoch):  # other weights at each save: no file shared
        fill(model, float(epoch))
        return manager.save(epoch=epoch)

    run = tmp_path / "run"
    with tfckpt.CheckpointManager(str(run), model, keep_last=None) as manager:
        first = [save(manager, e) for e in (1, 2, 3)][0]
    shard = next(p for p in (run / first.name).iterdir() if ".data-" in p.name)
    link = run / first.name / "ckpt.data-00001-of-00003"
    link.symlink_to(outside)
    os.mkfifo(run / first.name / "ckpt.data-00002-of-00003")
    digest = tree_digest(canary)
    assert cache(outside) > 0 and cache(shard) > 0
    saved = run_bounded(
        sys.executable,
        "-c",
        "import sys, support, tfckpt\n"
        "m = tfckpt.CheckpointManager(sys.argv[1], support.small_model(), keep_last=None)\n"
        "m.save(epoch=4); m.close()",
        run,
    )
    assert saved.returncode == 0, saved.stderr
    assert cached_bytes(shard) == 0  # the checkpoint's own file: dropped
    assert cached_bytes(outside) > 0 and tree_digest(canary) == digest
    assert link.is_symlink()

    # The third-newest checkpoint itself a link to a directory outside.
    linked = tmp_path / "linked"
    with tfckpt.CheckpointManager(str(linked), model, keep_last=None) as manager:
        first = [save(manager, e) for e in (1, 2, 3)][0]
    other = canary / "ckpt"
    (linked / first.name).rename(other)
    (linked / first.name).symlink_to(other, target_is_directory=True)
    theirs = [p for p in other.iterdir() if ".data-" in p.name]
    assert all(cache(p) > 0 for p in theirs)
    with tfckpt.CheckpointManager(str(linked), model, keep_last=None) as manager:
        save(manager, 4)
    assert all(cached_bytes(p) > 0 for p in theirs)


def test_a_deeply_nested_manifest_is_damage_and_the_rest_stays_reachable(tmp_path):
    run = tmp_path / "run"
    first, second = two_checkpoints(run)
    (run / second.name / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    view = tfckpt.open(run)
    assert [r.name for r in view.checkpoints] == [first.name]
    assert "nested too deeply" in view.problems[0].reason
    with pytest.warns(UserWarning):
        assert tfckpt.restore(small_model(), str(run)).name == first.name
    watched = run_bounded(sys.executable, "-c", WATCH, run)
    assert watched.stdout.strip() == repr([first.name]), watched.stderr


def test_a_state_archive_that_decompresses_to_much_more_is_refused(tmp_path):
    run = tmp_path / "run"
    with tfckpt.CheckpointManager(str(run), small_model()) as manager:
        record = manager.save(epoch=1, state={"history": [{"epoch": 1}], "x": np.zeros(3)})
    bomb = io.BytesIO()
    np.savez_compressed(bomb, a0=np.zeros(64 << 20, dtype=np.uint8))  # 64 MiB in a few KiB
    bomb = bomb.getvalue()
    assert len(bomb) < 1 << 20
    (run / record.name / "state-arrays.npz").write_bytes(bomb)

    def point_at_the_bomb(manifest):
        manifest["files"]["state-arrays.npz"]["size"] = len(bomb)
        manifest["files"]["state-arrays.npz"]["crc32"] = zlib.crc32(bomb)

    rewrite_manifest(record, point_at_the_bomb)
    view = tfckpt.open(run)
    assert [r.name for r in view.checkpoints] == [record.name]  # the manifest is consistent
    with pytest.raises(DamagedCheckpointError, match="state-arrays.npz: a0.npy is not an array"):
        view.state(view.checkpoints[0])
    with pytest.warns(UserWarning, match="a0.npy is not an array"):
        with pytest.raises(NoIntactCheckpointError, match="no.*intact state files|has intact"):
            view.history  # noqa: B018


def hostile_fuzz(tmp_path, first, cases):
    """Runs tests/scripts/hostile_directory.py: `cases` random hostile run
    directories, every entry point on each, in one process (a hang fails it)."""
    proc = run_script(
        "hostile_directory.py", tmp_path, first, cases, timeout=60 + 30 * cases,
        env=script_env(HANG_AFTER=240),
    )  # fmt: skip
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == cases, proc.stderr[-4000:]
    failures = [f"seed {r['seed']} {r['planted']}:\n{f}" for r in results for f in r["failures"]]
    assert not failures, "\n".join(failures)
    # Each kind of hostile entry was planted, and the entry points ran.
    planted = {name for r in results for name in r["planted"]}
    return results, planted


def test_hostile_directory_fuzz(tmp_path):
    results, planted = hostile_fuzz(tmp_path, first=0, cases=18)
    assert len(planted) >= 12
    assert all(r["outcomes"].get("ls") == "ok" for r in results)
    assert sum(r["outcomes"].get("resuming fit") == "ok" for r in results) >= 10


@pytest.mark.soak
def test_hostile_directory_fuzz_soak(tmp_path):
    results, planted = hostile_fuzz(tmp_path, first=1000, cases=500)
    assert len(planted) == 16
