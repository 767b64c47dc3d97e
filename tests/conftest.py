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
