"""The documentation: the site builds with no broken link or reference, the
README stays short and points into it, and the benchmark tables are the ones
generated from benchmarks/results.json."""

import json
import os
import subprocess
import sys

from support import ROOT, script_env

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


def _layers():
    """Each module's layer (0 = top), from docs/architecture.md's table: a
    folder gives its layer to every module in it."""
    import re

    rows = [
        line.split("|")
        for line in (ROOT / "docs" / "architecture.md").read_text().splitlines()
        if line.startswith("| ") and "`" in line
    ]
    package = ROOT / "tfckpt"
    layer = {}
    for i, row in enumerate(rows):
        for entry in re.findall(r"`([\w/.]+)`", row[2]):
            if entry.endswith("/"):
                for path in (package / entry).glob("*.py"):
                    layer[path.relative_to(package).with_suffix("").as_posix()] = i
            else:
                layer[entry.removesuffix(".py")] = i
    return layer


def _imports(path):
    """(module imported, name imported or None) for each tfckpt import of `path`."""
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfckpt"):
            base = node.module.removeprefix("tfckpt").removeprefix(".").replace(".", "/")
            for alias in node.names:
                sub = f"{base}/{alias.name}".lstrip("/")
                if (ROOT / "tfckpt" / f"{sub}.py").exists():
                    out.append((sub, None))  # `from tfckpt.store import fs`: a module
                else:
                    out.append((base, alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tfckpt."):
                    out.append((alias.name.removeprefix("tfckpt.").replace(".", "/"), None))
    return out


def _modules():
    package = ROOT / "tfckpt"
    return {
        p.relative_to(package).with_suffix("").as_posix(): p
        for p in package.rglob("*.py")
        if p.name != "__init__.py"
    }


def test_every_module_is_in_a_layer_and_imports_only_its_layer_or_below():
    layer = _layers()
    modules = _modules()
    assert set(modules) <= set(layer), sorted(set(modules) - set(layer))
    upward = [
        (module, imported)
        for module, path in modules.items()
        for imported, _ in _imports(path)
        if imported in layer and layer[imported] < layer[module]
    ]
    assert upward == []


def test_no_private_name_is_reached_across_folders():
    import ast

    def folder(module):
        return module.rpartition("/")[0]

    modules = _modules()
    reached = []
    for module, path in modules.items():
        module_names = {}  # local name -> module, for `mod._private` below
        for imported, name in _imports(path):
            if name is None:
                module_names[imported.rpartition("/")[2]] = imported
            elif (
                name.startswith("_")
                and name != "__version__"
                and folder(imported) != folder(module)
            ):
                reached.append((module, f"{imported}.{name}"))
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in module_names
                and node.attr.startswith("_")
                and folder(module_names[node.value.id]) != folder(module)
            ):
                reached.append((module, f"{module_names[node.value.id]}.{node.attr}"))
    assert reached == []
