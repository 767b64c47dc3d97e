"""The documentation: the site builds with no broken link or reference, the
README stays short and points into it, and the benchmark tables are the ones
generated from benchmarks/results.json."""

import json
import os
import subprocess
import sys

from conftest import ROOT, script_env

sys.path.insert(0, str(ROOT / "benchmarks"))
from report import END, START, render


def test_the_docs_site_builds_strictly(tmp_path):
    # mkdocs.yml sets strict: a warning (a broken link, an API reference that
    # does not resolve, a page missing from nav) fails the build.
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=script_env(NO_MKDOCS_2_WARNING="1"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ["CheckpointCallback", "CheckpointManager", "incremental", "shared_bytes"]:
        assert name in api, name


def test_readme_is_short_and_links_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    for target in [p.split(")")[0] for p in readme.split("](docs/")[1:]]:
        assert (ROOT / "docs" / target).is_file(), target
    # The two commands, and CI running exactly the test one.
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(
        line for line in readme.splitlines() if 'pip install -q -e ".[test]"' in line
    )
    assert test_command in ci


def test_benchmark_tables_are_generated_from_the_results():
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    page = (ROOT / "docs" / "performance.md").read_text()
    section = page.split(START, 1)[1].split(END, 1)[0]
    assert section.strip() == render(results).strip()
    assert os.path.getsize(ROOT / "benchmarks" / "scale.png") > 0


def test_modules_import_only_from_their_layer_or_below():
    # The layers as docs/architecture.md lists them, top to bottom.
    import re

    rows = [
        line.split("|")
        for line in (ROOT / "docs" / "architecture.md").read_text().splitlines()
        if line.startswith("| ") and "`" in line
    ]
    layer, current = {}, -1
    for row in rows:
        if row[1].strip():
            current += 1
        for module in re.findall(r"`(\w+)\.py`", row[2]):
            layer[module] = current
    modules = {p.stem for p in (ROOT / "tfckpt").glob("*.py")} - {"__init__"}
    assert modules <= set(layer), sorted(modules - set(layer))  # every module is listed
    upward = []
    for module in modules:
        text = (ROOT / "tfckpt" / f"{module}.py").read_text()
        imported = set(re.findall(r"from tfckpt\.(\w+) import", text))
        for names in re.findall(r"from tfckpt import ([\w, ]+)", text):
            imported |= {n.split(" as ")[0].strip() for n in names.split(",")}
        upward += [(module, d) for d in imported if d in layer and layer[d] < layer[module]]
    assert upward == []
