"""The cluster path end to end: a head node on the loopback address (`ray start --head`) in a
fresh HOME, `ray job submit --working-dir` of a smoke run and of a tiny `rayfed tune`, both
succeeded with their outputs; a second node joined to it, with a run, a search and a study spread
over both nodes and one process's numbers, and a run pinned by a Ray node label to the labelled
node; and no process of those nodes left behind."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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


def node_ports() -> list[str]:
    """Every port of one node its own: the test session's Ray instance holds the defaults (an agent
    that cannot bind its port never starts, and the job API then answers "No available agent")."""
    return [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "node-manager-port", "object-manager-port")]


@contextmanager
def ray_nodes(home: Path, head_cpus: int, extra_nodes: tuple[dict, ...] = ()) -> Iterator[tuple[str, str, dict]]:
    """A Ray head on the loopback address in a fresh ``HOME`` (no ~/.ray, no token yet, as on a new
    machine), plus one more node per entry of ``extra_nodes`` (``{"num_cpus": 1, "resources": {...},
    "labels": "key=value"}``),
    each with ports of its own; yields ``(GCS address, job API address, env)``; stops them all."""
    temp = Path("/tmp") / f"rf-{uuid.uuid4().hex[:6]}"  # Ray's socket paths must stay short
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "",
           "HOME": str(home)}
    # cluster/README.md's step: `ray start` never creates the token (it fails without one).
    generate = ray_cli("get-auth-token", "--generate", env=env)
    assert generate.returncode == 0 and (home / ".ray" / "auth_token").is_file(), generate.stderr
    try:
        start = ray_cli("start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", f"--num-cpus={head_cpus}",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}",
                        "--disable-usage-stats", f"--ray-client-server-port={free_port()}", *node_ports(), env=env)
        assert start.returncode == 0, start.stdout + start.stderr
        for node in extra_nodes:  # a worker node joins through the GCS and takes the head's temp dir
            join = ray_cli("start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
                           f"--num-cpus={node['num_cpus']}", f"--resources={json.dumps(node.get('resources', {}))}",
                           *([f"--labels={node['labels']}"] if "labels" in node else []),
                           "--disable-usage-stats", *node_ports(), env=env)
            assert join.returncode == 0, join.stdout + join.stderr
        yield f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", env
    finally:
        stop_head(temp)
    assert not head_processes(temp), "Ray processes left behind"


@pytest.fixture
def head(tmp_path_factory):
    """A Ray head node of its own (own ports, own temp dir, a fresh HOME), stopped afterwards."""
    with ray_nodes(tmp_path_factory.mktemp("home"), head_cpus=2) as (_, address, env):
        yield address, env


def head_processes(temp: Path) -> list:
    """The head's daemons (their command lines name its temp dir) and every process they started."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])
             and p.pid != os.getpid()]
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
    address, env = head
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


# Run in a process connected to the two-node cluster: a run, a federation-kind search and a
# parallel study, then where Ray placed their worker actors and study tasks (node ids, by phase), in
# out/nodes.json.
TWO_NODE_SCRIPT = """
import json, sys
from pathlib import Path

import ray
from ray.util.state import list_actors, list_tasks

import rayfed
from rayfed.config import SpaceParam

address, out, tiny, search_file, study_file = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), *sys.argv[4:]
ray.init(address=address)

def worker_nodes(seen, actor="LazyClientWorker"):
    actors = list_actors(address=address, filters=[("class_name", "=", actor)], limit=10000)
    new = {a.actor_id: a.node_id for a in actors if a.actor_id not in seen}
    seen.update(new)
    return sorted(set(new.values()))

seen, drivers, nodes = {}, {}, {}
cfg = rayfed.load_config(None, [*tiny, f"output_dir={out / 'run'}", "runtime.num_workers=2",
                                "runtime.num_cpus_per_worker=0.9"])
rayfed.run_experiment(cfg, loggers=[])
nodes["run"] = worker_nodes(seen)
worker_nodes(drivers, "DriverActor")

# Pinned by a Ray node label: both workers and the driver fit on either node, and land on the labelled one.
cfg = rayfed.load_config(None, [*tiny, f"output_dir={out / 'pinned'}", "runtime.num_workers=2",
                                "runtime.num_cpus_per_worker=0.4", "runtime.label_selector={rayfed-node: second}"])
rayfed.run_experiment(cfg, loggers=[])
nodes["pinned"] = worker_nodes(seen)
nodes["pinned_driver"] = worker_nodes(drivers, "DriverActor")
nodes["labelled"] = sorted(n["NodeID"] for n in ray.nodes()
                          if n["Alive"] and n["Labels"].get("rayfed-node") == "second")

cfg = rayfed.load_config(search_file, [f"output_dir={out / 'search'}", "runtime.executor=ray",
                                       "runtime.num_cpus_per_worker=0.25", "partition.num_clients=2",
                                       "algorithm.clients_per_round=2", "tune.kind=federation",
                                       "tune.cpus_per_trial=0.25"])
cfg.tune.space = {"algorithm.client_optimizer.lr": SpaceParam("grid", [0.01, 0.1])}
assert rayfed.run_search(cfg)["complete"]
nodes["search"] = worker_nodes(seen)

study = rayfed.load_study(study_file, [f"output_dir={out / 'study'}", "seeds=[0]", "concentrations=[10.0]",
                                       "experiment.runtime.executor=ray", "experiment.runtime.num_workers=1",
                                       "cpus_per_run=0.5", "parallel_runs=2"])
rayfed.run_study(study, out / "study")
chains = list_tasks(address=address, filters=[("func_or_class_name", "=", "run_chain")], limit=10000)
nodes["study"] = sorted({t.node_id for t in chains})
nodes["all"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
(out / "nodes.json").write_text(json.dumps(nodes))  # not stdout: Ray prints worker logs there
"""


def _without_seconds(path: Path) -> dict:
    """A summary without what depends on where and how fast it ran (its seconds, and its
    machines: two worker actors here, one process there; the numbers must not differ)."""
    summary = json.loads(path.read_text())
    summary.pop("seconds")
    summary.pop("machines", None)
    if isinstance(summary.get("personalization"), dict):
        summary["personalization"].pop("machines", None)
    return summary


def _prompt(path: Path):
    from safetensors.numpy import load_file

    return next(iter(load_file(str(path)).values()))


def test_two_nodes_share_a_run_a_search_and_a_study_with_one_nodes_numbers(tmp_path_factory, tmp_path, tiny_overrides):
    """A head and a second node (1 CPU each, on the loopback address): a run's two worker actors, a
    federation search's two trials and a study's two parallel chains each land on both nodes, and
    every number equals the same work done in one process."""
    import numpy as np
    import torch

    from rayfed.cli import main
    from rayfed.config import load_config
    from rayfed.experiment import run_experiment

    search_file, study_file = ROOT / "configs" / "tune" / "tiny.yaml", ROOT / "configs" / "study" / "tiny.yaml"
    out = tmp_path / "two"
    with ray_nodes(tmp_path_factory.mktemp("home"), head_cpus=1,
                   extra_nodes=({"num_cpus": 1, "resources": {"second_node": 1}, "labels": "rayfed-node=second"},),
                   ) as (gcs, _, env):
        done = subprocess.run([sys.executable, "-c", TWO_NODE_SCRIPT, gcs, str(out), json.dumps(tiny_overrides),
                               str(search_file), str(study_file)], env=env, capture_output=True, text=True,
                              timeout=900, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    nodes = json.loads((out / "nodes.json").read_text())
    assert len(nodes["all"]) == 2
    for phase in ("run", "search", "study"):  # 0.9 + 0.9 CPUs, or 2 x 0.85, cannot share a 1-CPU node
        assert nodes[phase] == nodes["all"], phase
    # runtime.label_selector: the pinned run's workers and its driver all ran on the labelled node.
    assert len(nodes["labelled"]) == 1 and nodes["pinned"] == nodes["pinned_driver"] == nodes["labelled"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker actor (runtime.torch_threads)
    try:
        one = load_config(None, [*tiny_overrides, f"output_dir={tmp_path / 'one'}", "runtime.executor=local"])
        run_experiment(one, loggers=[])
        assert _without_seconds(out / "run" / "summary.json") == _without_seconds(tmp_path / "one" / "summary.json")

        trials = sorted((out / "search" / "trials").iterdir())
        assert len(trials) == 2
        for trial in trials:
            cfg = load_config(trial / "config.yaml", [f"output_dir={tmp_path / trial.name}", "runtime.executor=local"])
            run_experiment(cfg, loggers=[])
            assert np.array_equal(_prompt(trial / "global_prompt.safetensors"),
                                  _prompt(tmp_path / trial.name / "global_prompt.safetensors")), trial.name

        seq = tmp_path / "sequential"
        assert main(["study", str(study_file), f"output_dir={seq}", "seeds=[0]", "concentrations=[10.0]"]) == 0
    finally:
        torch.set_num_threads(threads)
    summaries = sorted((out / "study").rglob("summary.json"))
    assert len(summaries) == 10
    for path in summaries:
        assert _without_seconds(path) == _without_seconds(seq / path.relative_to(out / "study")), path
