"""Checkpoint and resume: a run killed mid-way and resumed ends on the uninterrupted run's prompt,
bit for bit; a finished run's directory is not silently overwritten."""

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rayfed.config import OptimizerConfig, replace_keys
from rayfed.core.server_optimizer import ServerOptimizer
from rayfed.errors import UserError
from rayfed.experiment import RunExistsError, resume_experiment, run_experiment
from rayfed.outputs.checkpoint import CHECKPOINT, load_prompt, load_run_state, save_run_state
from rayfed.outputs.scores import DITTO_SCORES, EXAMPLE_SCORES, load_example_scores

SERVERS = {
    "sgd-momentum": ["algorithm.server_optimizer.name=sgd", "algorithm.server_optimizer.lr=1.0",
                     "algorithm.server_optimizer.momentum=0.9"],
    "adam": ["algorithm.server_optimizer.name=adam", "algorithm.server_optimizer.lr=0.05"],
    # Each client's top-k residual carries across rounds: it is saved in the checkpoint.
    # Ditto: each client's own prompt carries across rounds, saved in the checkpoint.
    "ditto": ["algorithm.name=ditto", "algorithm.server_optimizer.name=sgd", "algorithm.server_optimizer.lr=1.0"],
    # A prefix (model.peft=prefix_tuning) is the client's tensor as a prompt is: it resumes alike.
    "prefix-tuning": ["model.peft=prefix_tuning", "algorithm.server_optimizer.name=adam",
                      "algorithm.server_optimizer.lr=0.05"],
    # LoRA (model.peft=lora): its flat [1, P] tensor of every layer's A and B, top-k compressed
    # with each client's residual in the checkpoint.
    "lora": ["model.peft=lora", "model.lora_rank=2", "algorithm.server_optimizer.name=adam",
             "algorithm.server_optimizer.lr=0.05", "communication.compress=topk", "communication.topk_fraction=0.1"],
    "topk-error-feedback": ["algorithm.server_optimizer.name=sgd", "algorithm.server_optimizer.lr=1.0",
                            "communication.compress=topk", "communication.topk_fraction=0.05"],
}


@pytest.mark.parametrize("opt", [OptimizerConfig("sgd", 1.0, momentum=0.9), OptimizerConfig("adam", 0.05)],
                         ids=["sgd-momentum", "adam"])
def test_server_optimizer_state_restores_exactly(opt):
    torch.manual_seed(0)
    grads = [torch.randn(4, 8) for _ in range(6)]
    straight = ServerOptimizer(torch.zeros(4, 8), opt)
    for g in grads:
        straight.step(g)
    first = ServerOptimizer(torch.zeros(4, 8), opt)
    for g in grads[:3]:
        first.step(g)
    resumed = ServerOptimizer(torch.randn(4, 8), opt)  # a different start: everything comes from the state
    resumed.load_state(first.state())
    for g in grads[3:]:
        resumed.step(g)
    assert torch.equal(resumed.global_prompt(), straight.global_prompt())


def interruptible() -> None:
    """``preexec_fn`` for a subprocess this test interrupts: a shell that runs the suite in the
    background (nohup, ``&``, some CI runners) passes SIGINT on as ignored, and Python then never
    raises KeyboardInterrupt; restore the default, as a terminal has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def rayfed(*args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "offline"}
    return subprocess.Popen([sys.executable, "-m", "rayfed.cli", *args], env=env, preexec_fn=interruptible,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_prompt_bit_for_bit(tmp_path, tiny_overrides, server):
    overrides = [*tiny_overrides, *SERVERS[server], "runtime.executor=local", "algorithm.rounds=8",
                 "algorithm.local_steps=6", "eval.eval_every=3"]
    whole = subprocess.run([sys.executable, "-m", "rayfed.cli", "run", "configs/smoke.yaml", *overrides,
                            f"output_dir={tmp_path / 'whole'}"], capture_output=True, text=True,
                           env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert whole.returncode == 0, whole.stdout + whole.stderr

    run_dir = tmp_path / "killed"
    proc = rayfed("run", "configs/smoke.yaml", *overrides, f"output_dir={run_dir}")
    checkpoint = run_dir / CHECKPOINT
    deadline = time.monotonic() + 120
    while not (checkpoint.exists() and load_run_state(checkpoint)[0] >= 3):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the run never reached round 3"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # a real kill: no handler, no cleanup
    proc.wait()
    killed_at = load_run_state(checkpoint)[0]
    assert killed_at < 8 and not (run_dir / "summary.json").exists(), "the run finished before the kill"

    resumed = subprocess.run([sys.executable, "-m", "rayfed.cli", "resume", str(run_dir)], capture_output=True,
                             text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a = load_prompt(tmp_path / "whole" / "global_prompt.safetensors")[0]
    b = load_prompt(run_dir / "global_prompt.safetensors")[0]
    assert torch.equal(a, b)
    whole_state, resumed_state = (load_run_state(d / CHECKPOINT)[1] for d in (tmp_path / "whole", run_dir))
    assert sorted(whole_state) == sorted(resumed_state)  # the server's state and every per-client record
    assert all(torch.equal(whole_state[k], resumed_state[k]) for k in whole_state)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["round"] for e in events if e["event"] == "round"] == list(range(0, 9))
    summaries = [json.loads((d / "summary.json").read_text()) for d in (tmp_path / "whole", run_dir)]
    assert summaries[0]["final"] == summaries[1]["final"] and summaries[0]["initial"] == summaries[1]["initial"]
    assert summaries[0]["communication"] == summaries[1]["communication"]  # bytes before the kill are kept
    # Every evaluated round's per-example scores, once each (the rounds after the checkpoint were
    # scored again and replace their first scoring), and the intervals computed from them.
    # Ditto also keeps its clients' own prompts' scores, resumed the same way.
    assert (tmp_path / "whole" / DITTO_SCORES).is_file() == (server == "ditto") == (run_dir / DITTO_SCORES).is_file()
    for file in (EXAMPLE_SCORES, DITTO_SCORES) if server == "ditto" else (EXAMPLE_SCORES,):
        scores = [load_example_scores(d / file) for d in (tmp_path / "whole", run_dir)]
        assert sorted(set(scores[1]["epoch"].tolist())) == [0, 3, 6, 8]
        for name in scores[0]:
            assert (scores[0][name] == scores[1][name]).all(), (file, name)
    assert summaries[0]["final_intervals"] == summaries[1]["final_intervals"]
    low, high = summaries[1]["final_intervals"]["global_test"]["loss"]
    assert low <= summaries[1]["final"]["loss"] <= high


def _rewrite_checkpoint(path: Path, times: int) -> None:
    for round_idx in range(times):
        save_run_state(path, round_idx, {"prompt": torch.full((4, 64), float(round_idx)),
                                         "momentum": torch.full((4, 64), -float(round_idx))}, {"round": round_idx})


def test_a_checkpoint_read_while_its_run_rewrites_it_is_one_whole_checkpoint(tmp_path):
    """What a watcher (`rayfed status`, the resume test above, a Tune callback) reads while the run
    replaces its checkpoint is the old file or the new one, never one's header with the other's
    tensors (with safetensors.safe_open that mix failed ~5% of reads)."""
    path = tmp_path / CHECKPOINT
    _rewrite_checkpoint(path, 1)
    writer = multiprocessing.get_context("spawn").Process(target=_rewrite_checkpoint, args=(path, 1500))
    writer.start()
    reads = 0
    while writer.is_alive() or reads < 50:
        round_idx, tensors, record = load_run_state(path)
        assert record["round"] == round_idx
        assert torch.equal(tensors["prompt"], torch.full((4, 64), float(round_idx)))
        assert torch.equal(tensors["momentum"], torch.full((4, 64), -float(round_idx)))
        reads += 1
    writer.join()
    assert writer.exitcode == 0


def test_a_finished_run_is_not_overwritten_without_asking(tiny_config):
    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=1")
    run_experiment(cfg, loggers=[])
    before = (Path(cfg.output_dir) / "summary.json").read_text()
    with pytest.raises(RunExistsError, match="rayfed resume"):
        run_experiment(cfg, loggers=[])
    assert (Path(cfg.output_dir) / "summary.json").read_text() == before
    run_experiment(cfg, loggers=[], overwrite=True)


def test_overwrite_clears_the_old_prompts_personalizations_unless_one_is_being_written(tiny_config):
    """`--overwrite` used to keep the old prompt's personalize/ results, which `rayfed plot` then
    redrew as the new run's; one that another process is still writing stops the overwrite."""
    from filelock import FileLock

    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=1", "personalize.enabled=true",
                      "personalize.local_epochs=1")
    run_experiment(cfg, loggers=[])
    out = Path(cfg.output_dir)
    assert (out / "personalize" / "default" / "personalization.jsonl").is_file()
    (out / "personalize" / "other").mkdir()
    with FileLock(str(out / "personalize" / "other" / ".rayfed.lock")), \
            pytest.raises(UserError, match="another rayfed process is writing to .*other"):
        run_experiment(replace_keys(cfg, {"personalize.enabled": False}), loggers=[], overwrite=True)
    assert (out / "personalize" / "default" / "personalization.jsonl").is_file() and (out / "summary.json").is_file()
    run_experiment(replace_keys(cfg, {"personalize.enabled": False}), loggers=[], overwrite=True)
    assert not (out / "personalize").exists() and (out / "summary.json").is_file()


def test_a_second_process_aimed_at_a_run_directory_being_written_stops_at_once(tmp_path, tiny_overrides):
    """Two `rayfed run` into one output_dir used to both exit 0, the second replacing the first's
    results; now the second stops with one line while the first goes on to finish intact."""
    # 100 short rounds: the first is still writing once the second has started, however fast the machine.
    overrides = [*tiny_overrides, "runtime.executor=local", "algorithm.rounds=100", "eval.eval_every=100",
                 f"output_dir={tmp_path}"]
    first = rayfed("run", "configs/smoke.yaml", *overrides)
    deadline = time.monotonic() + 120
    while not (tmp_path / "config.yaml").exists():  # written under the lock
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "the first run never started writing"
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "rayfed.cli", "run", "configs/smoke.yaml", *overrides, "seed=1"],
                            capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert second.returncode == 2, second.stdout + second.stderr
    assert "another rayfed process is writing to" in second.stderr and "key 'output_dir'" in second.stderr
    assert first.wait(timeout=300) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 100
    assert "seed: 0" in (tmp_path / "config.yaml").read_text()


def _interrupted(tiny_config, name: str, *overrides: str):
    """A run stopped after round 2 of 4 (its checkpoint at round 2)."""
    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=2", "checkpoint.every=1", *overrides)
    cfg.output_dir = str(Path(cfg.output_dir).parent / name)
    run_experiment(cfg, loggers=[])
    (Path(cfg.output_dir) / "summary.json").unlink()  # as if it had stopped there
    return Path(cfg.output_dir)


def test_a_checkpoint_from_another_run_or_a_corrupted_one_is_refused_before_anything_starts(tiny_config):
    from rayfed.cli import main

    mine, other = _interrupted(tiny_config, "mine"), _interrupted(tiny_config, "other", "seed=1")
    (mine / CHECKPOINT).write_bytes((other / CHECKPOINT).read_bytes())  # a seed-1 checkpoint copied over
    with pytest.raises(UserError, match=r"written by another run than the one .* describes \(seed: 1 -> 0\)"):
        resume_experiment(mine, loggers=[])
    assert main(["resume", str(mine)]) == 2
    edited = _interrupted(tiny_config, "edited")
    text = (edited / "config.yaml").read_text()
    (edited / "config.yaml").write_text(text.replace("local_steps: 4", "local_steps: 5", 1))
    with pytest.raises(UserError, match=r"\(algorithm.local_steps: 4 -> 5\)"):
        resume_experiment(edited, loggers=[])
    import rayfed

    versioned, version = _interrupted(tiny_config, "versioned"), rayfed.__version__
    try:
        rayfed.__version__ = "99.0"  # a checkpoint from an older rayfed: the rounds after it may differ
        with pytest.raises(UserError, match=rf"\(rayfed: '{version}' -> '99.0'\).*another rayfed version"):
            resume_experiment(versioned, loggers=[])
    finally:
        rayfed.__version__ = version
    data = bytearray((other / CHECKPOINT).read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # the last tensor bytes flipped
    (other / CHECKPOINT).write_bytes(bytes(data))
    with pytest.raises(UserError, match="is corrupted: its tensors do not match the checksum"):
        load_run_state(other / CHECKPOINT)
    (other / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="is not a readable rayfed checkpoint"):
        load_run_state(other / CHECKPOINT)


def test_a_metrics_line_cut_off_by_a_crash_does_not_block_resume(tiny_config):
    run = _interrupted(tiny_config, "cut")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"event": "round", "round": 3, "train/lo')  # the crash came mid-line
    summary = resume_experiment(run, loggers=[])
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["rounds"] == 2 and [e["round"] for e in events if e["event"] == "round"] == [0, 1, 2]


@pytest.mark.ray
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_end_with_one_line_the_shell_code_and_no_ray_left(tmp_path, tiny_overrides, sig):
    """Ctrl-C printed a 30-line traceback and exited 1; SIGTERM ended by SIGABRT with Ray's C++
    stack dump. Both now say where the checkpoint is and how to continue, exit 128 + signal, and
    leave no Ray process behind; the resume line they print works."""
    import psutil

    run_dir = tmp_path / "run"
    proc = rayfed("run", "configs/smoke.yaml", *tiny_overrides, "algorithm.rounds=30", f"output_dir={run_dir}")
    deadline = time.monotonic() + 180
    while not (run_dir / CHECKPOINT).exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the run never wrote a checkpoint"
        time.sleep(0.1)
    family = psutil.Process(proc.pid).children(recursive=True)  # Ray's GCS, raylet, agents and workers
    assert any("gcs_server" in p.name() for p in family)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + sig, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"rayfed: interrupted by {sig.name}; the checkpoint of round ")
    assert f"continue with `rayfed resume {run_dir}`" in last
    assert "Traceback" not in output and "SIGTERM received" not in output
    assert "core_worker.cc" not in output  # no raw Ray error line on a default run (actor restart arguments)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, [p.name() for p in alive]
    resumed = subprocess.run([sys.executable, "-m", "rayfed.cli", "resume", str(run_dir), "runtime.executor=local"],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 30


@pytest.mark.ray
@pytest.mark.parametrize("after_s", [0.6, 1.2, 4.0])
def test_ctrl_c_while_ray_starts_leaves_nothing_running(tmp_path, tiny_overrides, after_s):
    """Interrupted before its first checkpoint (while torch, transformers and PEFT import, or while
    Ray and the actors start): the same one line and exit code, and none of the processes it
    started (Ray's agents included) outlive it. A Ctrl-C inside those imports used to print
    transformers' ModuleNotFoundError or a half-imported torch's RuntimeError instead."""
    import psutil

    run_dir = tmp_path / "early"
    proc = rayfed("run", "configs/smoke.yaml", *tiny_overrides, "algorithm.rounds=50", f"output_dir={run_dir}")
    seen: dict[int, psutil.Process] = {}
    started = time.monotonic()
    while time.monotonic() - started < after_s and proc.poll() is None:
        seen.update({p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)})
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output[-3000:]
    assert output.strip().splitlines()[-1].startswith("rayfed: interrupted by SIGINT; ")
    assert "Traceback" not in output, output[-3000:]
    _, alive = psutil.wait_procs(list(seen.values()), timeout=10)
    assert not alive, [p.name() for p in alive]


@pytest.mark.ray
def test_a_ctrl_c_inside_ray_init_waits_until_ray_is_up():
    """A Ctrl-C while ray.init connects to the Ray it started cut Ray's core worker half-built:
    the run printed its one line, then died of SIGSEGV at exit (or lost the Ctrl-C and trained on).
    It is now held until Ray is up, then interrupts as usual."""
    code = textwrap.dedent("""
        import os, signal, sys
        import ray, ray._private.worker as ray_worker
        from rayfed.config import RayConfig
        from rayfed.errors import raise_interrupted
        from rayfed.runtime.ray_backend import start_ray

        connect = ray_worker.connect
        def interrupted_connect(*args, **kwargs):  # Ctrl-C just as ray.init connects
            os.kill(os.getpid(), signal.SIGINT)
            return connect(*args, **kwargs)
        ray_worker.connect = interrupted_connect
        signal.signal(signal.SIGINT, raise_interrupted)
        try:
            start_ray(RayConfig(num_cpus=1))
        except KeyboardInterrupt:
            print("interrupted; Ray up:", ray.is_initialized())
            sys.exit(130)
    """)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          preexec_fn=interruptible)
    assert done.returncode == 130, done.stdout + done.stderr[-3000:]
    assert done.stdout.strip() == "interrupted; Ray up: True"


def test_a_ctrl_c_swallowed_by_library_code_still_stops_the_run_before_the_next_round(tiny_config):
    """The first Ctrl-C makes later ones ignored (so the clean-up runs undisturbed); one that code
    in between caught and dropped left a run nobody could stop. It is raised again before the next
    round, and the checkpoint of the last finished round is kept."""
    from rayfed.errors import Interrupted, interrupt_handled, raise_interrupted

    class SwallowsACtrlC:
        def log(self, event):
            if event.get("event") == "round" and event["round"] == 2:
                with contextlib.suppress(KeyboardInterrupt):  # a library that drops it
                    raise_interrupted(signal.SIGINT, None)

        def close(self):
            pass

    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=4")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(Interrupted):
            run_experiment(cfg, loggers=[SwallowsACtrlC()])
    finally:
        interrupt_handled()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert load_run_state(Path(cfg.output_dir) / CHECKPOINT)[0] == 2


def test_a_resume_whose_personalization_would_be_refused_stops_before_training(tiny_config):
    """A resume may change personalize.*, but not into settings that clash with the personalization
    already in the run: that used to be found only after the remaining rounds had trained."""
    import shutil

    from rayfed.config import ConfigError

    class KeepRoundOne:
        def log(self, event):
            if event.get("event") == "round" and event["round"] == 2:  # round 1's checkpoint is on disk
                shutil.copy(out / CHECKPOINT, out.parent / "round1.safetensors")

        def close(self):
            pass

    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=2", "personalize.enabled=true",
                      "personalize.local_epochs=1")
    out = Path(cfg.output_dir)
    run_experiment(cfg, loggers=[KeepRoundOne()])
    shutil.copy(out.parent / "round1.safetensors", out / CHECKPOINT)  # as if it had stopped after round 1
    (out / "summary.json").unlink()
    with pytest.raises(ConfigError, match=r"personalize.local_epochs: 1 -> 2"):
        resume_experiment(out, ["personalize.local_epochs=2"], loggers=[])
    assert load_run_state(out / CHECKPOINT)[0] == 1  # round 2 was not trained again


def test_a_key_added_later_at_its_old_behaviour_keeps_old_checkpoints_resumable(tiny_config):
    """A checkpoint written before model.dtype / algorithm.proximal_mu existed holds neither in its
    identity; a config at the values that reproduce the old behaviour has the same identity, and
    any other value is another run (a resume names the key)."""
    from rayfed.experiment import ADDED_KEYS, run_fingerprint, run_identity

    default = tiny_config()
    assert not set(ADDED_KEYS) & set(run_fingerprint(default))
    for key, value in (("model.dtype", "bfloat16"), ("algorithm.proximal_mu", 0.1)):
        other = tiny_config(f"{key}={value}", "algorithm.name=fedprox") if "proximal" in key else tiny_config(
            f"{key}={value}")
        assert run_fingerprint(other)[key] == value
        assert run_identity(other) != run_identity(default)
