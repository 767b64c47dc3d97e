"""pytest's fixtures and hooks, and nothing else: the helpers that test files
and scripts share are in support.py. pytest loads this file before any test
module, so importing support here sets its environment defaults before
keras is imported."""

import shutil
import subprocess

import pytest
from support import ROOT, make_data


@pytest.fixture(scope="session")
def inject_so(tmp_path_factory):
    """The fault-injection shim (tests/faults/inject.c), built for this session."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "the fault-injection tests build tests/faults/inject.c: install a C compiler (cc)"
    out = tmp_path_factory.mktemp("inject") / "inject.so"
    subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            "-O1",
            "-o",
            str(out),
            str(ROOT / "tests" / "faults" / "inject.c"),
            "-ldl",
        ],
        check=True,
    )
    return out


@pytest.fixture
def data():
    return make_data()


def pytest_collection_modifyitems(items):
    # The floor environment's run is the longest test: start it first, so the
    # other worker(s) take the rest of the suite meanwhile.
    items.sort(key=lambda item: item.get_closest_marker("floor") is None)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server for this worker: (port, environment)."""
    from storage import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def gcs():
    """fake-gcs-server for this worker: (port, environment)."""
    from storage import gcs_server

    with gcs_server() as server:
        yield server


@pytest.fixture
def bucket(s3, monkeypatch, request):
    """A new S3 bucket on the worker's server, its environment set for this
    process: the URL of a run directory in it."""
    import uuid

    import fsspec

    for key, value in s3[1].items():
        monkeypatch.setenv(key, value)
    name = f"t{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    return f"s3://{name}/run"


@pytest.fixture
def gcs_bucket(gcs, monkeypatch):
    import uuid

    import fsspec
    import fsspec.config

    for key, value in gcs[1].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon", "project": "test"})
    name = f"t{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("gcs", skip_instance_cache=True).mkdir(name)
    return f"gs://{name}/run"
