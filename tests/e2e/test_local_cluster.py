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
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL_SH = REPO / "cluster" / "local.sh"
RAY = REPO / ".venv" / "bin" / "ray"

# Distinct from local.sh's defaults (6390/8275/10091/23000) so a developer's own local cluster can stay up;
# MDKIF_E2E_PORT_SHIFT moves the whole block (two checkouts testing at once on one machine).
_SHIFT = int(os.environ.get("MDKIF_E2E_PORT_SHIFT", "0"))
PORTS = {
    "MDKIF_RAY_GCS_PORT": str(6392 + _SHIFT),
    "MDKIF_RAY_DASHBOARD_PORT": str(8277 + _SHIFT),
    "MDKIF_RAY_CLIENT_PORT": str(10093 + _SHIFT),
    "MDKIF_RAY_PORT_BASE": str(24000 + 1000 * _SHIFT),
}
SERVE_PORT = 8377 + _SHIFT  # the Serve HTTP proxy the serve stage starts on the head node


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


# The stages at small size, each one `ray job submit` on the cluster, each reading the previous one's output
# from a shared folder (the nodes share this machine's disk, as a cluster shares NFS or object storage):
# skills (Ray Train over the nodes) -> router -> RAG index (Ray Data over the nodes) -> evaluation (Ray
# actors over the nodes) -> Serve (deployed with `serve deploy` through the dashboard) -> one served answer.


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stages")


def _need(path: Path, stage: str) -> None:
    if not path.exists():
        pytest.skip(f"{stage} did not produce {path} (see that test's failure)")


def test_stage_train_skills(cluster, work):
    out = work / "adapters"
    cmd = ["mdkif", "train", "train/skills_demo.yaml", f"output_dir={out}", "model.name=tiny"]
    cmd += ["skills={qa: {}, nli: {}, mcqa: {}}", "optim.max_length=96", "optim.batch_size=2"]
    cmd += ["optim.lr=1.0e-2", "ray.num_workers=2", "ray.cpus_per_worker=0.5", "checkpoint_every=2"]
    logs = submit(cluster, cmd, timeout=480)
    manifest = json.loads((out / "skills.json").read_text())
    assert sorted(manifest["skills"]) == ["mcqa", "nli", "qa"], logs[-2000:]
    for skill, m in manifest["skills"].items():
        assert (out / skill / "adapter_model.safetensors").is_file(), skill
        assert m["val_loss_after"] < m["val_loss_before"], (skill, m["val_loss_before"], m["val_loss_after"])
    assert (out / "loss_curves.png").stat().st_size > 1000


def test_stage_route(cluster, work, shared_data):
    _need(work / "adapters" / "skills.json", "the skills stage")
    out = work / "router"
    cmd = [
        "mdkif",
        "route",
        "route/pubmedqa_gradient.yaml",
        "model.name=tiny",
        f"skills.root={work / 'adapters'}",
    ]
    cmd += [f"task.source={shared_data}/mcq/pubmedqa/pqal_dev500.json", "task.k=8", "task.n_val=4"]
    cmd += ["task.max_length=160", "gradient.steps=4", "gradient.batch_size=4", f"output={out}"]
    logs = submit(cluster, cmd, timeout=300)
    router = json.loads((out / "router.json").read_text())
    assert router["skills"] == ["qa", "mcqa", "nli"] or sorted(router["skills"]) == ["mcqa", "nli", "qa"]
    assert len(router["weights"]) == 3 and abs(sum(router["weights"]) - 1.0) < 1e-4, (
        router["weights"],
        logs[-1500:],
    )
    assert router["fit"]["method"] == "gradient" and router["fit"]["k"] == 8


def test_stage_rag_index(cluster, work):
    out = work / "rag"
    cmd = ["mdkif", "rag", "index", "rag/index_demo.yaml", f"persist_dir={out}", "cpus_per_actor=0.5"]
    logs = submit(cluster, cmd, timeout=300)
    manifest = json.loads((out / "index_manifest.json").read_text())
    total = sum(c["chunks"] for c in manifest["corpora"])
    assert total > 10, (manifest, logs[-1500:])


def test_stage_eval(cluster, work, shared_data):
    _need(work / "router" / "router.json", "the route stage")
    out = work / "eval"
    model = {"name": "tiny"}
    scoring = {"method": "loglik", "batch_size": 4}
    config = {
        "out": str(out),
        "shard_size": 4,
        "num_workers": 2,
        "cpus_per_worker": 0.5,
        "variants": [
            {"name": "base", "model": model, "scoring": scoring},
            {
                "name": "routed",
                "model": model,
                "router": {"adapters": str(work / "adapters"), "path": str(work / "router")},
                "scoring": scoring,
            },
        ],
        "benchmarks": [{"source": str(shared_data / "mcq" / "mirage_sample.json"), "limit": 4}],
    }
    path = work / "eval.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    logs = submit(cluster, ["mdkif", "eval", str(path), "--no-progress"], timeout=420)
    summary = json.loads((out / "summary.json").read_text())
    cells = {(r["variant"], r["benchmark"]): r for r in summary["results"]}
    assert {v for v, _ in cells} == {"base", "routed"}, logs[-1500:]
    for (variant, bench), r in cells.items():
        assert r["n"] == 4, (variant, bench)
        lines = (out / variant / bench / "predictions.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in lines]
        assert len(rows) == 4, (variant, bench)
        assert sum(row["prediction"] == row["gold"] for row in rows) == r["correct"], (variant, bench)
    assert (out / "report.md").is_file() and (out / "accuracy.png").stat().st_size > 1000


def test_stage_serve(cluster, work):
    for need in ("adapters/skills.json", "router/router.json", "rag/index_manifest.json"):
        _need(work / need, "an earlier stage")
    app = {
        "model": {"name": "tiny"},
        "adapters_dir": str(work / "adapters"),
        "profiles": {"routed": {"router": str(work / "router"), "rag": True, "k": 2}},
        "rag": {"persist_dir": str(work / "rag")},
        "limits": {"max_prompt_tokens": 512, "max_tokens": 64},
        "routed_model": {"ray_actor_options": {"num_cpus": 0.5}},
        "retriever": {"ray_actor_options": {"num_cpus": 0.25}},
        "ingress": {"ray_actor_options": {"num_cpus": 0.1}},
    }
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": SERVE_PORT},
        "applications": [
            {"name": "mdkif", "route_prefix": "/", "import_path": "mdkif.serving.app:build_app", "args": app}
        ],
    }
    path = work / "serve.yaml"
    path.write_text(json.dumps(config))
    serve_cli = [str(RAY.parent / "serve")]
    addr = ["--address", cluster.address]
    deploy = subprocess.run(
        [*serve_cli, "deploy", str(path), *addr],
        cwd=REPO,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    try:
        deadline = time.monotonic() + 300
        status = ""
        while time.monotonic() < deadline:
            status = subprocess.run(
                [*serve_cli, "status", *addr], env=cluster.env, capture_output=True, text=True, timeout=60
            ).stdout
            if re.search(r"status: RUNNING", status) or "DEPLOY_FAILED" in status:
                break
            time.sleep(3)
        assert "DEPLOY_FAILED" not in status and "RUNNING" in status, status
        body = {
            "model": "tiny:routed",
            "messages": [{"role": "user", "content": "What is the first treatment for anaphylaxis?"}],
            "max_tokens": 8,
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{SERVE_PORT}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=180) as response:
            reply = json.loads(response.read())
        assert reply["model"] == "tiny:routed"
        assert reply["usage"]["completion_tokens"] >= 1
        assert isinstance(reply["choices"][0]["message"]["content"], str)
        assert len(reply["mdkif"]["passages"]) == 2  # the retriever deployment answered too
    finally:
        subprocess.run(
            [*serve_cli, "shutdown", "-y", *addr], env=cluster.env, capture_output=True, timeout=120
        )
