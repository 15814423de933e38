"""The GPU check script (`bench/bench_gpu.py`) at toy size on the CPU, so the script a lent GPU runs has run
before it gets there: export, 4-bit fusion and routers (its fastest groups; training and ZeRO-3 have their
own tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_gpu_smoke_export_nf4_route(tmp_path):
    env = {**os.environ, "MDKIF_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--smoke", "--device", "cpu"]
    cmd += ["--only", "export", "nf4", "route", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert doc["failed"] == [], {k: doc["checks"][k].get("error") for k in doc["failed"]}
    checks = doc["checks"]
    assert {
        "export/peft/global/float32",
        "export/peft/per-layer/float32",
        "fusion/nf4",
        "route/cmaes",
    } <= set(checks)
    assert checks["export/peft/per-layer/float32"]["max_diff_vs_merged"] < 1e-5
    assert checks["fusion/nf4"]["quantized"] and "quantized base" in checks["fusion/nf4"]["merge_refused"]
    assert checks["route/gradient"]["final_loss"] < checks["route/gradient"]["first_loss"]
    assert (tmp_path / "gpu_smoke.md").read_text().startswith("# GPU checks")
