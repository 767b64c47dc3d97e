"""The remote tier (`mirror=`) and remote URLs everywhere, against real
storage servers on 127.0.0.1 (moto's S3 server, fake-gcs-server) started by
the suite: uploads, the commit protocol on object stores, the lease, a
restore on a fresh machine after kill -9, network faults through a proxy of
our own, and every reading entry point on a bucket."""

import json
import shutil

import fsspec
import pytest
from support import digest, make_model, run_script, script_env

import tfckpt
from tfckpt.remote.bucket import Bucket
from tfckpt.remote.remote_run import RemoteRun


def objects(url):
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return sorted(p[len(root) + 1 :] for p in fs.find(root))


def unpublished(url):
    return RemoteRun(Bucket(url)).scan()[2]


def test_killed_mid_upload_then_the_machine_is_gone_resumes_from_the_bucket(
    bucket, s3, tmp_path, monkeypatch
):
    from support import start_script

    env = script_env(**s3[1])
    monkeypatch.setenv("TFCKPT_CACHE", str(tmp_path / "cache"))
    # The uninterrupted run, followed live through its bucket by an evaluator
    # elsewhere (this process): each checkpoint once, in order, as it is
    # published, until training finished.
    reference = start_script(
        "mirror_train.py",
        tmp_path / "ref",
        bucket + "-ref",
        "--epochs",
        "5",
        "--out",
        tmp_path / "ref.json",
        env=env,
    )
    try:
        seen = [r.epoch for r in tfckpt.watch(bucket + "-ref", timeout=120, poll_interval=0.2)]
    finally:
        _, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err[-2000:]
    assert seen == sorted(set(seen)) and seen[-1] == 5

    run = tmp_path / "run"
    killed = run_script(
        "mirror_train.py", run, bucket, "--epochs", "5", "--kill-mid-upload", "3", env=env
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    # The checkpoint of epoch 3 was cut mid-upload: objects without a
    # manifest, which no reader takes for a checkpoint.
    assert unpublished(bucket) == ["ckpt-000003"]
    published = tfckpt.open(bucket).checkpoints
    assert [r.epoch for r in published][-1] == 2
    shutil.rmtree(run)  # the VM is gone, and its disk with it
    rerun = run_script(
        "mirror_train.py",
        run,
        bucket,
        "--epochs",
        "5",
        "--out",
        tmp_path / "rerun.json",
        env=env,
        check=True,
    )
    result = json.loads((tmp_path / "rerun.json").read_text())
    assert result["restored_epoch"] == 2 and result["epochs_run"] == [2, 3, 4]
    assert "downloaded and verified" in rerun.stderr
    assert result["digest"] == json.loads((tmp_path / "ref.json").read_text())["digest"]
    assert unpublished(bucket) == []  # the next writer removed the torn upload
    assert all(why is None for _, why in tfckpt.verify(bucket))
    names = [r.name for r in RemoteRun(Bucket(bucket)).checkpoints()]
    assert names[-1] > "ckpt-000003"  # the torn upload's number is never used again


def test_network_faults_are_retried_reported_once_and_never_published_torn(
    bucket, s3, tmp_path, monkeypatch
):
    import s3fs
    from storage import FaultProxy

    from tfckpt.saving import mirror as mirror_module

    monkeypatch.setattr(mirror_module, "RETRY_DELAYS", (0.1, 0.1))
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # s3fs's own retries: ours count
    proxy = FaultProxy(s3[0])
    proxy.cut_after = 32 << 10
    options = {
        "endpoint_url": f"http://127.0.0.1:{proxy.port}",
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}},
    }
    model = make_model(features=64, units=256)  # a data file of ~0.2 MB

    def train_and_save(epoch):  # new weights each time: every upload sends its data
        for v in model.weights:
            v.assign(v + 1.0)
        manager.save(epoch=epoch)

    manager = tfckpt.CheckpointManager(
        tmp_path / "run", model, mirror=bucket, storage_options=options, keep_last=None
    )
    mirror = manager.mirror
    train_and_save(1)
    mirror.flush()
    assert [r.name for r in mirror.published] == ["ckpt-000001"] and mirror.failure is None

    # A few connections reset: the upload is retried and succeeds, no warning.
    proxy.fail("reset", count=2)
    train_and_save(2)
    mirror.flush()
    assert proxy.faulted >= 1 and mirror.failure is None
    assert mirror.published[-1].name == "ckpt-000002"

    # The store unreachable for a while: reset, cut mid-object, stalled.
    with pytest.warns(UserWarning, match="mirror .*failed") as caught:
        for epoch, mode in ((3, "reset"), (4, "cut"), (5, "stall")):
            proxy.fail(mode)
            train_and_save(epoch)  # training goes on: the local save is unaffected
            mirror.flush()
            assert mirror.failure is not None, (
                mode,
                mirror.uploads,
                proxy.faulted,
                proxy.remaining,
            )
    assert len([w for w in caught if "mirror" in str(w.message)]) == 1  # reported once
    assert [r.epoch for r in manager.checkpoints] == [1, 2, 3, 4, 5]
    # Nothing torn is published: only what was verified, with its manifest.
    remote = RemoteRun(Bucket(bucket))  # straight to the server
    assert [r.name for r in remote.checkpoints()] == ["ckpt-000001", "ckpt-000002"]

    proxy.fail("pass")
    train_and_save(6)
    mirror.flush()
    assert mirror.failure is None
    records, problems, torn = remote.scan()
    assert [r.epoch for r in records] == [1, 2, 6] and problems == [] and torn == []
    # Unreachable at the end: close() tries the last upload, reports it, and returns.
    proxy.fail("reset")
    train_and_save(7)
    with pytest.warns(UserWarning, match="mirror .*ckpt-000007"):
        manager.close()
    assert not remote.is_finished()  # a watcher of the bucket is not told it ended
    proxy.close()
    # What is published verifies, file by file, from the store.
    assert [why for _, why in tfckpt.verify(bucket)] == [None, None, None]


def mirrored_run(directory, url, epochs=3, **kwargs):
    from support import fit, make_data

    model = make_model()
    fit(model, directory, epochs, make_data(), mirror=url, **kwargs)
    return model


def test_every_reading_entry_point_takes_a_bucket_and_cp_goes_local_s3_gcs_local(
    bucket, gcs_bucket, tmp_path, capsys, monkeypatch
):
    from support import make_data

    from tfckpt import cli

    monkeypatch.setenv("TFCKPT_CACHE", str(tmp_path / "cache"))
    model = mirrored_run(tmp_path / "run", bucket, epochs=3, keep_last=2)
    local = tfckpt.open(tmp_path / "run")
    run = tfckpt.open(bucket)
    assert [(r.name, r.step, r.epoch) for r in run.checkpoints] == [
        (r.name, r.step, r.epoch) for r in local.checkpoints
    ]
    assert run.best.name == local.best.name and run.history == local.history

    fresh = make_model()
    record = tfckpt.restore(fresh, bucket, "best")
    assert record.name == local.best.name
    restored = make_model()
    local.restore(restored, "best")
    assert digest(fresh) == digest(restored)

    capsys.readouterr()
    assert cli.main(["ls", bucket]) == 0
    listing = capsys.readouterr().out
    assert all(r.name in listing for r in local.checkpoints)
    assert cli.main(["info", bucket, "latest"]) == 0
    assert "dense" in capsys.readouterr().out
    assert cli.main(["verify", bucket]) == 0

    # The run finished: a watcher of the bucket yields every checkpoint, then ends.
    seen = [r.name for r in tfckpt.watch(bucket, timeout=30, poll_interval=0.2)]
    assert seen == [r.name for r in local.checkpoints]

    # The sidecar evaluator follows the bucket too (its log beside it, locally).
    monkeypatch.chdir(tmp_path)
    evaluator = tfckpt.SidecarEvaluator(make_model(), make_data(), bucket, timeout=30)
    rows = evaluator.start()
    assert [row["name"] for row in rows] == [r.name for r in local.checkpoints]
    assert evaluator.log_dir == "run-eval" and (tmp_path / "run-eval").is_dir()

    # cp: local -> s3 -> gcs -> local, verified at each hop, listings equal.
    hop1, hop2, back = bucket + "-copy", gcs_bucket, tmp_path / "back"
    assert cli.main(["cp", str(tmp_path / "run"), hop1]) == 0
    assert cli.main(["cp", hop1, hop2]) == 0
    assert cli.main(["cp", hop2, str(back)]) == 0
    names = lambda d: [(r.name, r.step, r.size) for r in tfckpt.open(d).checkpoints]  # noqa: E731
    assert names(hop1) == names(hop2) == names(back) == names(tmp_path / "run")
    again = make_model()
    tfckpt.restore(again, back, "latest", optimizer=again.optimizer)
    assert digest(again) == digest(model)
    # A second copy of the same run skips what is there.
    assert tfckpt.copy(tmp_path / "run", hop2, quiet=True).copied == []


def test_one_writer_per_remote_directory(bucket, tmp_path, monkeypatch):
    import os
    import time

    from tfckpt.remote import lease as lease_module

    remote = Bucket(bucket)
    first = lease_module.Lease(remote)
    first.take()
    # A second writer on another machine is refused while the lease is live.
    other = lease_module.Lease(remote)
    with pytest.raises(tfckpt.DirectoryLockedError, match="active writer .*One writer"):
        other.take(wait=False)
    # A second manager mirroring there refuses to start, naming the holder.
    with pytest.raises(tfckpt.DirectoryLockedError, match="active writer"):
        tfckpt.CheckpointManager(tmp_path / "b", make_model(), mirror=bucket, mirror_every=1)
    assert (
        not (tmp_path / "b" / ".lock").exists()
        or tfckpt.CheckpointManager(tmp_path / "b", make_model()).close() is None
    )  # the local directory was released
    # The holder on this host died (kill -9): its lease is free at once.
    stale = first.read()
    stale.update(pid=2**22 + 12345, owner="dead")  # no such process
    remote.write(lease_module.LEASE, data=json.dumps(stale).encode())
    rerun = lease_module.Lease(remote)
    rerun.take(wait=False)
    assert rerun.read()["owner"] == rerun.owner
    # The first writer finds it lost the lease and never publishes again.
    with pytest.raises(lease_module.LeaseLost, match="taken by"):
        first.check()
    # A lease of another host that runs out unrenewed is waited out, then taken.
    gone = dict(rerun.read(), host="another-host", expires=time.time() + 0.5, owner="vm-1")
    remote.write(lease_module.LEASE, data=json.dumps(gone).encode())
    said = []
    newcomer = lease_module.Lease(remote)
    newcomer.take(say=said.append)
    assert "waiting" in said[0] and newcomer.read()["owner"] == newcomer.owner
    assert os.getpid() == newcomer.read()["pid"]
    newcomer.release()
    assert first.bucket.size(lease_module.LEASE) is None


def test_bad_mirror_arguments_say_what_is_allowed(tmp_path):
    import datetime

    model = make_model()
    with pytest.raises(ValueError, match="`mirror` must be a remote directory URL .*Received"):
        tfckpt.CheckpointCallback(tmp_path / "a", mirror=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="`mirror_every` must be a positive integer"):
        tfckpt.CheckpointCallback(tmp_path / "a", mirror="s3://b/x", mirror_every=0)
    with pytest.raises(ValueError, match="positive timedelta"):
        tfckpt.CheckpointManager(
            tmp_path / "a", model, mirror="s3://b/x", mirror_every=datetime.timedelta(0)
        )
    with pytest.raises(ValueError, match="`mirror_keep_last` sets up the remote tier"):
        tfckpt.CheckpointCallback(tmp_path / "a", mirror_keep_last=2)
    with pytest.raises(ValueError, match="`mirror_keep_last` must be an integer >= 0"):
        tfckpt.CheckpointCallback(tmp_path / "a", mirror="s3://b/x", mirror_keep_last=-1)
    with pytest.raises(TypeError, match="`storage_options` must be a dict"):
        tfckpt.CheckpointCallback(tmp_path / "a", mirror="s3://b/x", storage_options="key")
    assert not (tmp_path / "a").exists()  # nothing was created


def test_unchanged_files_are_uploaded_once_and_rotten_local_copies_fall_back_to_the_bucket(
    bucket, tmp_path
):
    import keras
    from support import rot

    def frozen_backbone_model():
        keras.utils.set_random_seed(0)
        backbone = keras.layers.Dense(1024, name="backbone")
        model = keras.Sequential([keras.Input((1024,)), backbone, keras.layers.Dense(1)])
        backbone.trainable = False  # 4 MiB of weights that never change: a file of its own
        model.compile(keras.optimizers.Adam(1e-3), "mse")
        return model

    model = frozen_backbone_model()
    x = keras.random.normal((64, 1024), seed=1)
    y = keras.random.normal((64, 1), seed=2)
    manager = tfckpt.CheckpointManager(tmp_path / "run", model, mirror=bucket, keep_last=5)
    for epoch in (1, 2, 3):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
        manager.save(epoch=epoch)
        manager.mirror.flush()
    first, *later = manager.mirror.uploads
    assert len(later) == 2 and first.sent > 4 << 20
    for upload in later:  # the backbone's file is copied inside the store, not sent
        assert upload.copied >= 4 << 20 and upload.sent < first.sent / 10
    manager.close()
    expected = digest(model)

    # Every local copy rots (one flipped bit in each data file): the newest
    # intact checkpoint comes from the bucket, verified, under a new name.
    for ckpt in sorted((tmp_path / "run").glob("ckpt-*")):
        for data in ckpt.glob("ckpt.data-*"):
            rot(data, data.stat().st_size // 2)
    again = frozen_backbone_model()
    manager = tfckpt.CheckpointManager(tmp_path / "run", again, mirror=bucket, keep_last=5)
    with pytest.warns(UserWarning, match="damaged"):
        record = manager.restore()
    assert record.epoch == 3 and record.name == "ckpt-000004"
    assert digest(again) == expected
    manager.close()
    # The damaged local checkpoints are kept for inspection, marked.
    assert len(list((tmp_path / "run").glob(".damaged-ckpt-*"))) == 3


def test_a_hostile_bucket_is_read_bounded_and_never_outside_the_cache(
    bucket, tmp_path, monkeypatch
):
    from tfckpt.store.layout import manifest_checksum

    monkeypatch.setenv("TFCKPT_CACHE", str(tmp_path / "cache"))
    mirrored_run(tmp_path / "run", bucket, epochs=1)  # ckpt-000001, genuine
    fs, root = fsspec.core.url_to_fs(bucket)
    good = json.loads(fs.cat_file(f"{root}/ckpt-000001/manifest.json"))
    for name, files in (
        ("ckpt-000002", {"../../escape": {"size": 3, "crc32": 0}}),  # a path out
        ("ckpt-000003", {"ckpt.index": {"size": 2**40}}),  # sizes it does not hold
    ):
        bad = dict(good, seq=int(name[-1]), files={**good["files"], **files})
        bad["checksum"] = manifest_checksum(bad)
        for fname in good["files"]:
            fs.copy(f"{root}/ckpt-000001/{fname}", f"{root}/{name}/{fname}")
        fs.pipe_file(f"{root}/{name}/manifest.json", json.dumps(bad).encode())
    fs.pipe_file(f"{root}/ckpt-000004/manifest.json", b"[" * (20 << 20))  # 20 MB, deep
    fs.pipe_file(f"{root}/ckpt-000005/a/b/manifest.json", b"{}")  # a nested name
    fs.pipe_file(f"{root}/.lease", b"\xff garbage")
    (tmp_path / "cache").mkdir()
    outside = sorted(p.name for p in tmp_path.iterdir())

    run = tfckpt.open(bucket)
    assert [r.name for r in run.checkpoints] == ["ckpt-000001"]
    results = dict(tfckpt.verify(bucket))
    assert results["ckpt-000001"] is None
    assert "outside the checkpoint" in results["ckpt-000002"]
    assert "ckpt.index" in results["ckpt-000003"]
    assert "larger than" in results["ckpt-000004"]
    assert sorted(p.name for p in tmp_path.iterdir()) == outside  # nothing new beside
    assert not list(tmp_path.rglob("escape"))
    # A writer takes the bucket (a garbled lease holds nothing) and leaves the
    # damaged checkpoints alone; its own are numbered past them.
    manager = tfckpt.CheckpointManager(tmp_path / "fresh", make_model(), mirror=bucket)
    assert manager.latest.name == "ckpt-000001"
    manager.save(epoch=9)
    manager.close()
    names = [r.name for r in RemoteRun(Bucket(bucket)).checkpoints()]
    # (ckpt-000005 held no manifest of its own: an unpublished upload, removed;
    # its number is not used again.)
    assert names == ["ckpt-000001", "ckpt-000006"]


@pytest.mark.soak
def test_soak_killed_at_random_moments_then_the_machine_is_gone(bucket, s3, tmp_path):
    """SIGKILL at random moments (seeded) of a mirrored run, the local
    directory deleted after each kill: every rerun resumes from the bucket,
    and the last one ends bitwise equal to an uninterrupted run."""
    import random
    import time

    from support import start_script

    env = script_env(**s3[1])
    run_script(
        "mirror_train.py",
        tmp_path / "ref",
        bucket + "-ref",
        "--epochs",
        "8",
        "--out",
        tmp_path / "ref.json",
        env=env,
        check=True,
    )
    rng = random.Random(26)
    run = tmp_path / "run"
    for _ in range(10):
        proc = start_script("mirror_train.py", run, bucket, "--epochs", "8", env=env)
        time.sleep(rng.uniform(4.0, 12.0))
        proc.kill()
        proc.communicate()
        shutil.rmtree(run, ignore_errors=True)
        for _, why in tfckpt.verify(bucket):
            assert why is None  # nothing torn was ever published
    run_script(
        "mirror_train.py",
        run,
        bucket,
        "--epochs",
        "8",
        "--out",
        tmp_path / "end.json",
        env=env,
        check=True,
    )
    end = json.loads((tmp_path / "end.json").read_text())
    assert end["digest"] == json.loads((tmp_path / "ref.json").read_text())["digest"]
    assert unpublished(bucket) == []
