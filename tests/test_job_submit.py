"""The cluster path end to end: a head node on the loopback address (`ray start --head`),
`ray job submit --working-dir` of a smoke run and of a tiny `rayfed tune`, both succeeded with
their outputs, and no process of that head left behind."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the ray CLI of this environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def head(tmp_path_factory):
    """A Ray head node of its own (own ports, own temp dir), stopped afterwards."""
    temp = Path("/tmp") / f"rf-{uuid.uuid4().hex[:6]}"  # Ray's socket paths must stay short
    gcs, dashboard = free_port(), free_port()
    # Every port its own: the test session's Ray instance holds the defaults (an agent that cannot
    # bind its port never starts, and the job API then answers "No available agent").
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "node-manager-port", "object-manager-port", "ray-client-server-port")]
    home = tmp_path_factory.mktemp("home")  # a fresh HOME: no ~/.ray, no token yet, as on a new machine
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "",
           "HOME": str(home)}
    # cluster/README.md's step: `ray start` never creates the token (it fails without one).
    generate = ray_cli("get-auth-token", "--generate", env=env)
    assert generate.returncode == 0 and (home / ".ray" / "auth_token").is_file(), generate.stderr
    start = ray_cli("start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}",
                    "--disable-usage-stats", *ports, env=env)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield f"http://127.0.0.1:{dashboard}", env, temp
    finally:
        stop_head(temp)
    assert not head_processes(temp), "Ray processes left behind"


def head_processes(temp: Path) -> list:
    """The head's daemons (their command lines name its temp dir) and every process they started."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    return list({p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}.values())


def stop_head(temp: Path) -> None:
    """Stop this head node only: `ray stop` would stop every Ray instance on the machine, the test
    session's own included (and a driver whose GCS dies exits)."""
    import psutil

    procs = head_processes(temp)
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)


def submit(address: str, env: dict, *entrypoint: str, timeout: float = 300) -> str:
    """`ray job submit --working-dir .` of the entrypoint; wait for a final status (the CLI
    prints "Job '<id>' succeeded" when it is done); return it."""
    job_id = f"rayfed-{uuid.uuid4().hex[:8]}"
    runtime_env = json.dumps({"excludes": yaml.safe_load((ROOT / "cluster/runtime_env.yaml").read_text())["excludes"]})
    deadline = time.monotonic() + 60
    while True:  # the head's job agent starts a little after `ray start` returns
        out = ray_cli("job", "submit", "--address", address, "--submission-id", job_id, "--working-dir",
                      str(ROOT), "--runtime-env-json", runtime_env, "--no-wait", "--", *entrypoint, env=env)
        if out.returncode == 0 or "No available agent" not in out.stderr or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    assert out.returncode == 0, out.stdout + out.stderr
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = ray_cli("job", "status", "--address", address, job_id, env=env)
        found = re.search(rf"Job '{job_id}' (succeeded|failed|stopped)", status.stdout + status.stderr)
        if found:
            if found.group(1) != "succeeded":
                logs = ray_cli("job", "logs", "--address", address, job_id, env=env).stdout
                pytest.fail(f"job {job_id} {found.group(1)}:\n{logs[-4000:]}")
            return found.group(1)
        time.sleep(1.0)
    pytest.fail(f"job {job_id} did not finish in {timeout} s")


def test_ray_job_submit_runs_a_smoke_run_and_a_tiny_search(head, tmp_path, tiny_overrides):
    address, env, _ = head
    python = sys.executable  # the job runs in a copy of the repository, with this environment's python
    run_dir = tmp_path / "smoke"
    assert submit(address, env, python, "-m", "rayfed.cli", "run", "configs/smoke.yaml", *tiny_overrides,
                  "runtime.executor=ray", "runtime.num_workers=2", "runtime.num_cpus_per_worker=0.5",
                  f"output_dir={run_dir}") == "succeeded"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["loss"] < summary["initial"]["loss"]
    assert (run_dir / "checkpoint.safetensors").is_file() and (run_dir / "rounds.png").is_file()

    search = tmp_path / "search.yaml"
    cfg = yaml.safe_load((ROOT / "configs/tune/tiny.yaml").read_text())
    cfg["tune"]["space"] = {"personalize.l2_strength": {"type": "grid", "values": [0.0, 1.0]}}
    cfg["output_dir"] = str(tmp_path / "search")
    search.write_text(yaml.safe_dump(cfg))
    assert submit(address, env, python, "-m", "rayfed.cli", "tune", str(search)) == "succeeded"
    rows = (tmp_path / "search" / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # a header and two trials
    assert (tmp_path / "search" / "pareto.csv").is_file() and (tmp_path / "search" / "pareto.png").is_file()


def test_the_cluster_readme_creates_the_token_before_it_starts_the_head():
    """The fixture above follows these steps in a fresh HOME; the README must give them in order."""
    readme = (ROOT / "cluster" / "README.md").read_text()
    block = readme.split("## A local head node and `ray job submit`")[1].split("```bash")[1].split("```")[0]
    lines = [line.strip() for line in block.strip().splitlines()]
    generate = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/ray get-auth-token --generate"))
    start = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/ray start --head"))
    assert generate < start and "RAY_AUTH_MODE=token" in lines[0]
