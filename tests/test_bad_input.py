"""Bad input, catalogued: each case exits non-zero with one line naming the key, file or line at
fault, and leaves an existing run's outputs as they were."""

import json
from pathlib import Path

import pytest
import torch

from rayfed.cli import main
from rayfed.experiment import run_experiment
from rayfed.model.prompt_model import _tiny_llama
from rayfed.outputs.checkpoint import CHECKPOINT, load_run_state
from rayfed.runtime.driver import NonFiniteError

FAST = ["runtime.executor=local", "algorithm.rounds=1"]


def jsonl(tmp: Path, name: str, payload: bytes) -> str:
    path = tmp / name
    path.write_bytes(payload)
    return str(path)


EXAMPLE = {"task": "t", "category": "c", "instruction": "Copy.", "input": "a", "target": "a"}


def cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """``(case, argv after the config, text the error must contain)``."""
    good = json.dumps(EXAMPLE).encode() + b"\n"
    sni = tmp / "sni"
    sni.mkdir(exist_ok=True)
    (sni / "task001_broken.json").write_text('{"Definition": ["x"], "Instances": [{"input": "a"}]')
    from transformers import DistilBertConfig, DistilBertModel

    encoder = tmp / "encoder"  # a real model with safetensors weights, but no causal-LM head
    encoder_config = DistilBertConfig(vocab_size=20, dim=8, hidden_dim=8, n_layers=1, n_heads=1)
    DistilBertModel(encoder_config).save_pretrained(encoder)
    _tiny_llama()[1].save_pretrained(encoder)
    pickled = tmp / "pickled"
    model, tokenizer = _tiny_llama()
    model.config.save_pretrained(pickled)
    tokenizer.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    (tmp / "a_file").write_text("")
    sni_args = ["data.source=sni", "data.max_examples_per_task=1000"]
    malformed = jsonl(tmp, "m.jsonl", good + b"{oops}\n")
    empty = jsonl(tmp, "e.jsonl", b"")
    not_utf8 = jsonl(tmp, "u.jsonl", good + b"\xff\xfe\n")
    oversized = jsonl(tmp, "o.jsonl", b"x" * (2 << 20))
    no_field = jsonl(tmp, "f.jsonl", b'{"task": "t"}\n')
    not_object = jsonl(tmp, "l.jsonl", b"[1, 2]\n")
    return [
        ("unknown key", ["algorithm.roundz=3"], "algorithm.roundz"),
        ("wrong type", ["algorithm.rounds=many"], "algorithm.rounds"),
        ("negative count", ["partition.train_examples=-1"], "partition.train_examples"),
        ("zero concentration", ["partition.concentration=0"], "partition.concentration"),
        ("more sampled than clients", ["algorithm.clients_per_round=9"], "algorithm.clients_per_round"),
        ("both steps and epochs", ["algorithm.local_epochs=2"], "algorithm.local_steps"),
        ("unknown optimizer", ["algorithm.client_optimizer.name=lion"], "algorithm.client_optimizer.name"),
        ("non-positive lr", ["algorithm.client_optimizer.lr=0"], "algorithm.client_optimizer.lr"),
        ("unknown algorithm", ["algorithm.name=scaffold"], "algorithm.name"),
        ("renamed key", ["partition.alpha=0.5"], "partition.alpha' was renamed"),
        ("override without =", ["algorithm.rounds"], "key=value"),
        ("ratio out of range", ["personalize.interp_ratios=[0.5,2]"], "personalize.interp_ratios"),
        ("unknown failure policy", ["runtime.on_client_failure=ignore"], "runtime.on_client_failure"),
        ("too many workers", ["runtime.num_workers=99"], "runtime.num_workers"),
        ("dropout of one", ["availability.dropout=1"], "availability.dropout"),
        ("sni without a path", ["data.source=sni"], "data.path"),
        ("sni path missing", [*sni_args, f"data.path={tmp / 'nope.jsonl'}"], "nope.jsonl"),
        ("malformed JSONL", [*sni_args, f"data.path={malformed}"], "m.jsonl:2: invalid JSON"),
        ("empty JSONL", [*sni_args, f"data.path={empty}"], "e.jsonl: no examples"),
        ("non-UTF-8 JSONL", [*sni_args, f"data.path={not_utf8}"], "u.jsonl:2: not UTF-8"),
        ("oversized JSONL line", [*sni_args, f"data.path={oversized}"], "o.jsonl:1: line of"),
        ("JSONL missing a field", [*sni_args, f"data.path={no_field}"], "f.jsonl:1: missing key"),
        ("JSONL not an object", [*sni_args, f"data.path={not_object}"], "l.jsonl:1: expected a JSON object"),
        ("SNI task file missing fields", [*sni_args, f"data.path={sni}"], "task001_broken.json"),
        ("empty task filter", ["data.tasks=[no_such_task]"], "data.tasks"),
        ("fewer examples than the partition asks", ["partition.train_examples=5000"], "partition."),
        ("model path missing", ["model.name=/no/such/model"], "model.name '/no/such/model'"),
        ("not a causal LM", [f"model.name={encoder}"], "not a causal language model"),
        ("pickled weights", [f"model.name={pickled}"], "never loads pickled weights"),
        ("output_dir under a file", [f"output_dir={tmp / 'a_file' / 'run'}"], "key 'output_dir'"),
        ("a Ray address that does not answer", ["runtime.executor=ray", f"ray.address=127.0.0.1:{closed_port()}"],
         "key 'ray.address': no Ray cluster answers"),
        ("an lr too large for float32", ["algorithm.client_optimizer.lr=1e308"], "key 'algorithm.client_optimizer.lr'"),
        ("a personalization lr too large", ["personalize.optimizer.lr=1e39"], "key 'personalize.optimizer.lr'"),
        ("a seed past 2**32", ["seed=18446744073709551616"], "key 'seed'"),
        ("a negative seed", ["seed=-1"], "key 'seed'"),
        ("an override indexing a list", ["personalize.interp_ratios.0=0.5"], "indexes into a list"),
        ("an override indexing a list, brackets", ["personalize.interp_ratios[0]=0.5"], "indexes into a list"),
        ("an unknown tune kind", ["tune.kind=bayes"], "key 'tune.kind'"),
        ("a personalization name that climbs out", ["personalize.name=.."], "key 'personalize.name'"),
    ]


def command_cases(tmp: Path, run: Path) -> list[tuple[str, list[str], str]]:
    """``(case, whole argv, text the error must contain)`` for bad files and commands; ``run`` is a
    finished run to copy."""
    import shutil

    def file(name: str, payload: bytes) -> str:
        (tmp / name).write_bytes(payload)
        return str(tmp / name)

    def broken_run(name: str, checkpoint: bytes) -> str:
        shutil.copytree(run, tmp / name)
        (tmp / name / CHECKPOINT).write_bytes(checkpoint)
        return str(tmp / name)

    whole = (run / CHECKPOINT).read_bytes()
    (tmp / "a_dir").mkdir()
    study = "configs/study/tiny.yaml"
    return [
        ("a config that is a YAML list", ["run", file("list.yaml", b"- a\n- b\n")], "not a YAML list"),
        ("an empty config", ["run", file("empty.yaml", b"")], "is empty"),
        ("a config path that is a directory", ["run", str(tmp / "a_dir")], "is a directory"),
        ("a 2 MiB config", ["validate", file("big.yaml", b"a" * (2 << 20))], "MiB"),
        ("a config with a YAML syntax error", ["validate", file("syntax.yaml", b"model: [1, 2\n")], "line 1"),
        ("a zero-byte checkpoint", ["resume", broken_run("zero", b"")], "not a readable rayfed checkpoint"),
        ("a truncated checkpoint", ["resume", broken_run("cut", whole[: len(whole) // 2])],
         "not a readable rayfed checkpoint"),
        ("resume of a directory that holds no run", ["resume", str(tmp / "a_dir")], "not a rayfed run"),
        ("resume changing what was trained", ["resume", str(run), "algorithm.rounds=9"], "algorithm.rounds"),
        ("personalize of a directory that holds no run", ["personalize", str(tmp / "a_dir")], "config.yaml is missing"),
        ("a study file that is a YAML list", ["study", str(tmp / "list.yaml")], "not a YAML list"),
        ("a study seed out of range", ["study", study, "seeds=[-1]"], "key 'seeds'"),
        ("a study override indexing a list", ["study", study, "seeds.0=3"], "indexes into a list"),
        ("a searched key that does not exist", ["tune", "configs/tune/tiny.yaml", f"output_dir={tmp / 't'}",
                                                "tune.space={algorithm.roundz: {type: grid, values: [1]}}"],
         "tune.space.algorithm.roundz"),
    ]


def closed_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_bad_input_fails_with_one_line_naming_what_is_wrong(tmp_path, capsys, tiny_overrides):
    previous = tmp_path / "previous"
    run_experiment(load(tiny_overrides, f"output_dir={previous}"), loggers=[])
    before = {p.name: p.read_bytes() for p in previous.iterdir() if p.is_file()}
    table = cases(tmp_path)
    failures = []
    for case, extra, expected in table:
        out_dir = previous if case != "output_dir under a file" else None
        argv = ["run", "configs/smoke.yaml", *tiny_overrides, *FAST,
                *([f"output_dir={out_dir}", "--overwrite"] if out_dir else []), *extra]
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        lines = [line for line in err.splitlines() if line.startswith("rayfed")]
        if rc == 0 or expected not in err or len(lines) != 1:
            failures.append(f"{case}: rc={rc}, stderr={err[-300:]!r}")
    assert not failures, "\n".join(failures)
    commands = command_cases(tmp_path, previous)
    assert len(table) + len(commands) >= 50
    for case, argv, expected in commands:
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        lines = [line for line in err.splitlines() if line.startswith("rayfed")]
        if rc != 2 or expected not in err or len(lines) != 1:
            failures.append(f"{case}: rc={rc}, stderr={err[-300:]!r}")
    assert not failures, "\n".join(failures)
    after = {p.name: p.read_bytes() for p in previous.iterdir() if p.is_file()}
    assert after == before  # bad input never touched the existing run


def load(overrides, *extra):
    from rayfed.config import load_config

    return load_config("configs/smoke.yaml", [*overrides, *FAST, *extra])


def test_a_nan_loss_stops_the_run_naming_round_and_client_and_keeps_the_last_checkpoint(tmp_path, tiny_overrides,
                                                                                         monkeypatch):
    from rayfed.algorithms.fedavg import FedAvg

    real = FedAvg.client_updates

    def poisoned(self, model, trains, prompts, seeds, max_rows=None):
        out = real(self, model, trains, prompts, seeds, max_rows)
        if len(seeds) == 1 and seeds[0] == poisoned.seed:  # one client of round 2
            out[0] = (out[0][0] * float("nan"), float("nan"))
        return out

    from rayfed.core.sampling import derive_seed

    poisoned.seed = derive_seed(0, "client", 2, 1)
    monkeypatch.setattr(FedAvg, "client_updates", poisoned)
    cfg = load(tiny_overrides, "algorithm.rounds=3", f"output_dir={tmp_path / 'nan'}")
    with pytest.raises(NonFiniteError, match="round 2, client 1"):
        run_experiment(cfg, loggers=[])
    assert load_run_state(tmp_path / "nan" / CHECKPOINT)[0] == 1  # round 1's checkpoint, loadable


def test_a_disk_that_fills_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path, tiny_overrides, monkeypatch):
    import safetensors.torch as st  # rayfed.outputs.checkpoint imports its writer when it writes

    real = st.save_file
    calls = {"n": 0}

    def full_disk(tensors, path, metadata=None):
        calls["n"] += 1
        if "checkpoint" in str(path) and calls["n"] > 4:  # the third round's checkpoint
            Path(path).write_bytes(b"\0" * 10)  # a partial file, then the disk is full
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(st, "save_file", full_disk)
    cfg = load(tiny_overrides, "algorithm.rounds=4", f"output_dir={tmp_path / 'full'}")
    with pytest.raises(OSError, match="No space left"):
        run_experiment(cfg, loggers=[])
    done, state, _ = load_run_state(tmp_path / "full" / CHECKPOINT)
    assert 1 <= done < 4 and torch.isfinite(state["prompt"]).all()
