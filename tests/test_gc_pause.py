"""Python's cyclic collector stays out of a save (a full collection of a big
heap costs ~1 s, GIL held) and is left as the program had it."""

import gc
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from support import small_model

import tfckpt
from tfckpt.store import gc_pause

# Where TF's save and restore do their per-variable work.
TF_SAVE_CODE = tuple(
    os.path.join("tensorflow", "python", "checkpoint", name)
    for name in ("save_util.py", "functional_saver.py", "restore.py")
)


def collections_inside_tf_save(run):
    """Runs `run()` with a collection due at nearly every allocation and
    returns the automatic collections (thread, function) that started inside
    TF's save or restore, where they make their many short-lived objects."""
    inside = []

    def watch(phase, info):
        if phase != "start":
            return
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.endswith(TF_SAVE_CODE):
                inside.append((threading.current_thread().name, frame.f_code.co_name))
                return
            frame = frame.f_back

    threshold = gc.get_threshold()
    gc.set_threshold(1, 1000, 1000)
    gc.callbacks.append(watch)
    try:
        run()
    finally:
        gc.callbacks.remove(watch)
        gc.set_threshold(*threshold)
    return inside


@pytest.mark.parametrize("async_save", [False, True])
def test_no_collection_runs_inside_a_save_or_restore_and_the_collector_is_left_on(
    tmp_path, async_save
):
    model = small_model()
    with tfckpt.CheckpointManager(tmp_path, model, keep_last=2, async_save=async_save) as manager:

        def saves_and_a_restore():
            for step in (1, 2, 3):
                manager.save(step)
            manager.wait()
            assert manager.restore().step == 3

        assert collections_inside_tf_save(saves_and_a_restore) == []
        assert gc.isenabled()
        # The same saves with the collector left on do collect inside TF's
        # save: the check above can see one.
        hold = gc_pause.hold
        gc_pause.hold = lambda timeout=None: SimpleNamespace(release=lambda: None)
        try:
            assert collections_inside_tf_save(lambda: (manager.save(4), manager.wait()))
        finally:
            gc_pause.hold = hold
    assert [r.step for r in tfckpt.open(str(tmp_path)).checkpoints] == [3, 4]


def test_a_collector_the_program_turned_off_stays_off(tmp_path):
    model = small_model()
    gc.disable()
    try:
        with tfckpt.CheckpointManager(tmp_path, model, async_save=True) as manager:
            manager.save(1)
            manager.wait()
        with tfckpt.CheckpointManager(tmp_path, model) as manager:
            manager.save(2)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_holds_nest_across_threads_and_end_once():
    first, second = gc_pause.hold(), gc_pause.hold()
    assert not gc.isenabled()
    done = threading.Thread(target=first.release)
    done.start()
    done.join()
    assert not gc.isenabled()  # one hold left
    first.release()  # again: nothing
    assert not gc.isenabled()
    second.release()
    assert gc.isenabled()


def test_a_hold_with_a_timeout_ends_by_itself():
    held = gc_pause.hold(timeout=0.2)
    assert not gc.isenabled()
    deadline = time.monotonic() + 30
    while not gc.isenabled() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gc.isenabled()
    held.release()  # after the timeout: nothing
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_during_a_hold_has_its_collector_on():
    held = gc_pause.hold()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave at once
        os.write(write, b"1" if gc.isenabled() else b"0")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
        assert not gc.isenabled()  # the parent's hold is still on
    finally:
        os.close(read)
        os.waitpid(pid, 0)
        held.release()
    assert gc.isenabled()
