"""Security defaults: no pickle on any load path, no remote code unless asked, no secret in any
output file."""

import os
import re
from pathlib import Path

import pytest
import torch

from rayfed.experiment import run_experiment
from rayfed.model.prompt_model import _tiny_llama, load_backbone

ROOT = Path(__file__).resolve().parents[1]


def test_pickled_weights_are_refused_with_a_way_out(tmp_path):
    model, tokenizer = _tiny_llama()
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle
    with pytest.raises(ValueError, match="never loads pickled weights"):
        load_backbone(str(tmp_path))


def test_remote_code_runs_only_when_the_config_says_so(tmp_path, monkeypatch, tiny_config):
    import transformers

    model, tokenizer = _tiny_llama()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    assert tiny_config().model.trust_remote_code is False
    load_backbone(str(tmp_path))
    load_backbone(str(tmp_path), trust_remote_code=True)
    assert seen == [False, True]


def test_no_load_path_unpickles():
    """torch.load and pickle are not used anywhere in the package (safetensors and JSON only)."""
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "rayfed").rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"torch\.load\(|^\s*import (cloud)?pickle|^\s*from (cloud)?pickle", line)]
    assert not offenders


def test_secrets_from_the_environment_never_reach_an_output_file(tiny_config, monkeypatch):
    secret = "sk-rayfed-test-" + os.urandom(8).hex()
    monkeypatch.setenv("WANDB_API_KEY", secret)
    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=1", "logging.wandb.enabled=true",
                      "logging.wandb.mode=offline")
    run_experiment(cfg, loggers=[])
    files = [p for p in Path(cfg.output_dir).rglob("*") if p.is_file()]
    assert any(p.name.endswith(".wandb") for p in files)  # the W&B run was written
    assert not [p for p in files if secret.encode() in p.read_bytes()]


# --- The Ray that rayfed starts --------------------------------------------------------------

def _short_tmp() -> Path:
    """A short Ray temp dir (its unix sockets must fit in 107 characters)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))


def _start_run(tmp: Path, out: Path, tiny_overrides: list[str], rounds: int, **env_vars: str | None):
    """``rayfed run`` in the background; an env var given as None is unset."""
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(tmp), **env_vars}
    env = {key: value for key, value in env.items() if value is not None}
    return subprocess.Popen([sys.executable, "-m", "rayfed.cli", "run", "configs/smoke.yaml", *tiny_overrides,
                             f"algorithm.rounds={rounds}", "ray.num_cpus=2", f"output_dir={out}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.ray
def test_a_stale_cluster_file_in_rays_temp_dir_is_never_joined(tmp_path, tiny_overrides):
    """A `ray_current_cluster` left by a dead Ray made `rayfed run` try to join it (a hang past
    150 s, or with ray.num_cpus set Ray's misleading "num_cpus and num_gpus must not be provided")."""
    tmp = _short_tmp()
    (tmp / "ray").mkdir()
    (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")  # nothing listens there
    proc = _start_run(tmp, tmp_path / "out", tiny_overrides, rounds=1)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output[-3000:]
    assert (tmp_path / "out" / "summary.json").is_file()


@pytest.mark.ray
def test_a_default_runs_ports_are_the_documented_ones_and_refuse_clients_without_the_token(tmp_path, tiny_overrides):
    """docs/security.md lists what a default run's Ray listens on: Ray's gRPC servers (GCS,
    raylet, agents, driver and workers), every one behind the token, and the runtime-env agent's
    HTTP port (401 without it). No Prometheus endpoint answers (Ray serves it without
    authentication). A client without the token, or with a wrong one, is refused; one with it joins."""
    import http.client
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    import psutil

    from rayfed.runtime.ray_backend import METRICS_PORTS

    tmp = _short_tmp()
    held = []  # Ray's autoscaler and API server serve /metrics on these by default
    for port in (44217, 44227):
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:  # held by another Ray on this machine: the run could not open it anyway
                held.append(port)
    out, home = tmp_path / "out", tmp_path / "home"  # a fresh HOME: no ~/.ray, so Ray creates the token
    proc = _start_run(tmp, out, tiny_overrides, rounds=400, HOME=str(home), **dict.fromkeys(METRICS_PORTS))
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoint.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run never wrote a checkpoint"
            time.sleep(0.2)
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        listening = [(p.name(), c.laddr) for p in family for c in p.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert (home / ".ray" / "auth_token").stat().st_mode & 0o077 == 0  # readable by its owner only
        names = {name for name, _ in listening}
        assert {"gcs_server", "raylet"} <= names, listening
        assert all(n in ("gcs_server", "raylet", "python", "python3") or n.startswith("ray::") for n in names), names
        for name, addr in listening:
            host = "127.0.0.1" if addr.ip in ("0.0.0.0", "::") else addr.ip
            try:
                status = urllib.request.urlopen(f"http://{host}:{addr.port}/metrics", timeout=3).status
            except urllib.error.HTTPError as err:
                status = err.code
            except (OSError, http.client.HTTPException):  # a gRPC port: not HTTP
                status = None
            assert status != 200, f"{name} serves HTTP without the token on {addr}"

        gcs_server = next(p for p in family if p.name() == "gcs_server")
        node_ip = next(a.split("=", 1)[1] for a in gcs_server.cmdline() if a.startswith("--node-ip-address="))
        gcs = f"{node_ip}:{next(a.port for n, a in listening if n == 'gcs_server')}"
        join = f"import ray; ray.init(address='{gcs}'); print('JOINED', ray.cluster_resources().get('CPU'))"
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        for extra, joins in (({"RAY_AUTH_MODE": "disabled"}, False),
                             ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}, False),
                             ({"RAY_AUTH_MODE": "token"}, True)):  # the run's own token, from HOME/.ray
            env = {**base, **extra, "RAY_TMPDIR": str(tmp), "HOME": str(home)}
            client = subprocess.run([sys.executable, "-c", join], env=env, capture_output=True, text=True, timeout=120)
            assert ("JOINED 2.0" in client.stdout) == joins, (extra, client.stdout + client.stderr[-2000:])
        if held:
            pytest.skip(f"everything else checked; ports {held} are held by another process here, so whether a "
                        "run opens them was not")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)


def test_ray_without_token_authentication_is_warned_about_once_naming_the_key_that_accepts_it(monkeypatch, capsys):
    import warnings

    from rayfed.cli import _show_warning
    from rayfed.config import RayConfig
    from rayfed.errors import UnauthenticatedRayWarning
    from rayfed.runtime.ray_backend import warn_if_unauthenticated

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.warns(UnauthenticatedRayWarning, match="run code as you.*ray.allow_unauthenticated=true") as seen:
        warn_if_unauthenticated(RayConfig(), None)
    _show_warning(seen[0].message, seen[0].category, "", 0)
    assert capsys.readouterr().err.startswith("rayfed: warning: RAY_AUTH_MODE=disabled: the local Ray cluster")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_unauthenticated(RayConfig(allow_unauthenticated=True), None)  # the risk accepted: silent
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        warn_if_unauthenticated(RayConfig(), "10.0.0.1:6379")
