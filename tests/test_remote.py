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


def test_killed_mid_upload_then_the_machine_is_gone_resumes_from_the_bucket(bucket, s3, tmp_path):
    env = script_env(**s3[1])
    reference = run_script(
        "mirror_train.py",
        tmp_path / "ref",
        bucket + "-ref",
        "--epochs",
        "5",
        "--out",
        tmp_path / "ref.json",
        env=env,
        check=True,
    )
    assert reference.returncode == 0
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
    names = [r.name for r in tfckpt.open(bucket).checkpoints]
    assert "ckpt-000003" not in names  # never reused for another checkpoint


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
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 1}},
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
    manager.close()
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
