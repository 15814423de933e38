"""Stages as Ray jobs on a real three-node cluster on this machine (cluster/local.sh).

One cluster per module (starting it is most of the cost), always torn down. Each stage is one test that
calls `submit(cmd)`: `ray job submit` with the repository as working_dir and cluster/runtime_env.yaml, the
same way a user submits to a real cluster; it returns the job's logs and fails with them when the job does.
To add a stage: one more `test_<stage>` calling `submit([...])` and checking its artifacts.

Own ports, temp dir and token (see cluster/local.sh), so it runs beside anyone else's Ray and beside a
`cluster/local.sh up` of your own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL_SH = REPO / "cluster" / "local.sh"
RAY = REPO / ".venv" / "bin" / "ray"

# Distinct from local.sh's defaults (6390/8275/10091/23000) so a developer's own local cluster can stay up.
PORTS = {
    "MDKIF_RAY_GCS_PORT": "6392",
    "MDKIF_RAY_DASHBOARD_PORT": "8277",
    "MDKIF_RAY_CLIENT_PORT": "10093",
    "MDKIF_RAY_PORT_BASE": "24000",
}


@dataclass
class LocalCluster:
    env: dict[str, str]  # what a client needs: RAY_AUTH_MODE, token path, RAY_ADDRESS
    address: str  # the dashboard / Jobs API


def _client_env(script_env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([LOCAL_SH, "env"], env=script_env, capture_output=True, text=True, check=True).stdout
    env = dict(script_env)
    env.pop("RAY_AUTH_TOKEN", None)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if not RAY.exists():
        pytest.skip(f"{RAY} not found (run `make setup`)")
    tmp = Path(f"/tmp/mdkif-e2e-{os.getpid()}")  # short: Unix socket paths are capped at 107 bytes
    script_env = {**os.environ, **PORTS, "MDKIF_RAY_TMP": str(tmp), "MDKIF_RAY_AUTH": "token"}
    ok = False
    try:
        up = subprocess.run([LOCAL_SH, "up"], env=script_env, capture_output=True, text=True, timeout=480)
        assert up.returncode == 0, f"local.sh up failed:\n{up.stderr[-3000:]}\n{_node_logs(tmp)}"
        env = _client_env(script_env)
        yield LocalCluster(env=env, address=env["RAY_ADDRESS"])
        ok = True
    finally:
        subprocess.run([LOCAL_SH, "down"], env=script_env, capture_output=True, timeout=180)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)  # kept on failure: the node logs are in there


def _node_logs(tmp: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(tmp.glob("local-cluster/*.log"))
    )


def submit(cluster: LocalCluster, cmd: list[str], timeout: float = 300) -> str:
    """Submit `cmd` as a Ray job (repository as working_dir), wait for it and return its logs.

    One `ray job submit` that follows the job's log to its end; fails with the log unless the job
    SUCCEEDED, and stops the job when it runs past `timeout` seconds.
    """
    job_id = f"e2e-{uuid.uuid4().hex[:8]}"
    ray_job = [str(RAY), "job"]
    addr = ["--address", cluster.address]
    submit_cmd = [*ray_job, "submit", *addr, "--submission-id", job_id]
    submit_cmd += ["--runtime-env", "cluster/runtime_env.yaml", "--", *cmd]
    try:
        proc = subprocess.run(
            submit_cmd, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        stop = [*ray_job, "stop", *addr, job_id]
        subprocess.run(stop, cwd=REPO, env=cluster.env, capture_output=True, timeout=120)
        pytest.fail(f"job {' '.join(cmd)} still running after {timeout:.0f}s; stopped")
    logs = proc.stdout + proc.stderr
    status = _job_status(logs)
    assert status == "SUCCEEDED", f"job {' '.join(cmd)} ended {status}:\n{logs[-6000:]}"
    return logs


def _job_status(out: str) -> str:
    # `ray job submit|status` end with a sentence per state (ray/dashboard/modules/job/cli.py: _log_job_status)
    for pattern, status in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"), ("was stopped", "STOPPED")):
        if re.search(rf"Job '[^']+' {pattern}", out):
            return status
    found = re.search(r"Status for job '[^']+': (\w+)", out)
    return found.group(1) if found else "UNKNOWN"


# ---------------------------------------------------------------------------------------------- the cluster


def test_three_nodes_with_their_resources_and_work_on_each(cluster):
    status = subprocess.run(
        [str(RAY), "status", "--address", cluster.env["MDKIF_RAY_GCS_ADDRESS"]],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    active = status.split("Active:")[1].split("Pending:")[0]
    assert len(re.findall(r"\bnode_[0-9a-f]+", active)) == 3, status
    for resource in ("head", "worker_a", "worker_b"):
        assert re.search(rf"/1\.0 {resource}\b", status), status
    # A job that places one task on each node through the custom resources: scheduling spans the nodes.
    probe = (
        "import json, ray; ray.init(); "
        "where = ray.remote(lambda: ray.get_runtime_context().get_node_id()); "
        "ids = ray.get([where.options(num_cpus=0, resources={r: 0.1}).remote() "
        "for r in ('head', 'worker_a', 'worker_b')]); "
        "alive = [n for n in ray.nodes() if n['Alive']]; "
        "print('PROBE', json.dumps({'ids': ids, 'alive': len(alive)}))"
    )
    logs = submit(cluster, ["python", "-c", probe], timeout=180)
    probe_out = json.loads(logs.split("PROBE ", 1)[1].splitlines()[0])
    assert probe_out["alive"] == 3
    assert len(set(probe_out["ids"])) == 3, "the three tasks should have run on three different nodes"


# ---------------------------------------------------------------------------------------------- stages


def test_models_check(cluster):
    logs = submit(cluster, ["mdkif", "models", "check", "--name", "tiny"], timeout=180)
    assert "model: tiny" in logs and "tokens/s" in logs


def test_data_build(cluster, shared_data, tmp_path):
    out = tmp_path / "skills"
    cmd = ["mdkif", "data", "build", "--source", str(shared_data), "--out", str(out), "--max-per-task", "20"]
    logs = submit(cluster, [*cmd, "--skip-bad"], timeout=300)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest, logs[-2000:]
    trains = sorted(out.glob("*/train.jsonl"))
    assert len(trains) >= 10, [p.parent.name for p in trains]
    assert all(p.stat().st_size > 0 for p in trains)
    assert "wrote" in logs
