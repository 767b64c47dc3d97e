"""The benchmark keeps working (at a tiny size; nothing about speed is asserted)."""

import json
import os
import subprocess
import sys

from support import ROOT, script_env


def run_benchmark(script, *args):
    """Runs benchmarks/`script` with `args`; fails with its stderr's end."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_compare_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "results.json"
    proc = run_benchmark(
        "compare.py",
        "--size-mb",
        "2",
        "--repeats",
        "1",
        "--fit-steps",
        "2",
        "--fit-epochs",
        "3",
        "--fit-rounds",
        "1",
        "--dir",
        str(tmp_path),
        "--json",
        str(out),
        "--incremental-saves",
        "3",
        "--scale",
        "--scale-sizes",
        "1,2",
        "--scale-repeats",
        "2",
        "--many-variables",
        "20",
        "--plot",
        str(tmp_path / "scale.png"),
    )
    results = json.loads(out.read_text())
    assert results["bytes"] > 0
    for key in [
        "raw write+fsync",
        "tfckpt sync save (fsync, checksums, commit)",
        "tfckpt async: fit blocked per save",
        "keras ModelCheckpoint (.weights.h5)",
    ]:
        assert results["seconds"][key] > 0, key
    fit = results["fit"]
    assert set(fit["steps/s"]) == {
        "no checkpointing",
        "raw write+fsync",
        "tf save + fsync",
        "keras ModelCheckpoint (.weights.h5, no fsync)",
        "tfckpt sync",
        "tfckpt async",
        "tfckpt sync, cache not recycled",
        "tfckpt async, cache not recycled",
        "raw write+fsync in a thread",
        "raw write+fsync in a writer process",
    }
    assert set(fit["blocked per save"]) == set(fit["steps/s"]) - {"no checkpointing"}
    assert results["incremental"]["incremental"]["disk used"] > 0
    assert [p["label"] for p in results["scale"]] == ["1 MB", "2 MB", "20 small variables"]
    assert all(len(p["samples"]["tfckpt sync save"]) == 2 for p in results["scale"])
    assert (tmp_path / "scale.png").stat().st_size > 0
    # The tables docs/performance.md shows, generated from the same figures.
    assert "| durable sync save within 1.1x of raw write+fsync" in proc.stdout


def test_serving_export_benchmark_runs_at_a_tiny_size():
    proc = run_benchmark("serving_export.py", "--quick")
    summary = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert summary["async + ServingExport"]["export_per_save_s"] > 0
    assert summary["async"]["export_per_save_s"] == 0


def test_scale_curve_alone_replaces_its_part_of_the_results(tmp_path):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"fit": {"kept": True}}))
    run_benchmark(
        "compare.py",
        "--only-scale",
        "--scale-sizes",
        "1",
        "--scale-repeats",
        "2",
        "--many-variables",
        "20",
        "--repeats",
        "1",
        "--dir",
        str(tmp_path),
        "--json",
        str(out),
        "--plot",
        str(tmp_path / "scale.png"),
    )
    results = json.loads(out.read_text())
    assert results["fit"] == {"kept": True}
    assert [p["label"] for p in results["scale"]] == ["1 MB", "20 small variables"]
    assert (tmp_path / "scale.png").stat().st_size > 0


def test_many_variables_fit_benchmark_runs_at_a_tiny_size():
    proc = run_benchmark(
        "many_variables_fit.py",
        "--variables",
        "30",
        "--epochs",
        "3",
        "--pause",
        "0",
        "--collector-on",
    )
    modes = [line.split(":")[0] for line in proc.stdout.splitlines() if line[:1].isalpha()]
    assert modes == ["sync", "async", "sync, collector on", "async, collector on"]
    assert proc.stdout.count("full collections:") == 4


def test_page_cache_reuse_benchmark_runs_at_a_tiny_size(tmp_path):
    proc = run_benchmark(
        "page_cache_reuse.py", "--mb", "4", "--gap", "0", "--rounds", "2", "--dir", str(tmp_path)
    )
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("free page reporting: ")
    assert sum("median" in line for line in lines) == 4
    assert os.listdir(tmp_path) == []  # its files are removed
