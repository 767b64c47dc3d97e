"""The benchmark keeps working (at a tiny size; nothing about speed is asserted)."""

import json
import subprocess
import sys

from conftest import ROOT, script_env


def test_compare_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--size-mb", "2",
         "--repeats", "1", "--fit-steps", "2", "--fit-epochs", "1", "--dir", str(tmp_path),
         "--json", str(out)],
        capture_output=True, text=True, env=script_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["bytes"] > 0
    for key in ["raw write+fsync", "tfckpt sync save (fsync, checksums, commit)",
                "tfckpt async: fit blocked per save", "keras ModelCheckpoint (.weights.h5)"]:
        assert results["seconds"][key] > 0, key
    assert set(results["fit_steps_per_second"]) == {
        "no checkpointing", "keras ModelCheckpoint", "tfckpt sync", "tfckpt async"}
    assert "| tfckpt sync / raw write+fsync |" in proc.stdout
