"""WandbLogger, offline: drive it like a run would, then read back what W&B wrote to disk.

wandb 0.31 writes no ``files/config.yaml`` or ``wandb-summary.json`` for an offline run (the Go core's
sender does that only online); everything lives in the run's ``.wandb`` transaction log, a LevelDB-style
record log of ``wandb_internal_pb2.Record`` protos. wandb 0.31 ships no Python reader for it any more
(``wandb.sdk.internal.datastore`` is gone), so ``read_transaction_log`` below parses the framing
(checksums verified) and wandb's own protobuf classes decode the records. It is a private format, so
the reader lives here, in the tests; rayfed itself never reads it.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

wandb = pytest.importorskip("wandb")

from rayfed.config import WandbConfig  # noqa: E402
from rayfed.outputs.wandb_logger import WandbLogger, resolve_mode  # noqa: E402

FAKE_KEY = "fake0api0key0" + "7f3c9a1e5b2d4c6e8a0b1c2d3e4f5a6b7c8d"

# --- Reading W&B's transaction log (a private format: read here, in the tests, never by rayfed) ---

_LOG_MAGIC = b":W&B" + struct.pack("<HB", 0xBEE1, 0)  # ident, magic, version
_LOG_BLOCK = 32 * 1024
_CHUNK_HEADER = 7  # crc32 (seeded with the chunk type), length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_transaction_log(path: Path) -> list[Any]:
    """The records of a run's ``run-*.wandb`` file as ``wandb_internal_pb2.Record`` protos.

    The file is a LevelDB-style log (32 KiB blocks of checksummed chunks) behind a 7-byte W&B header.
    wandb 0.31 has no Python reader for it (the Go core writes it), hence these lines. A truncated or
    half-written tail ends the list instead of raising, so a file still being written reads as a prefix.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(_LOG_MAGIC):
        return []
    pos, pending, payloads = len(_LOG_MAGIC), b"", []
    while pos + _CHUNK_HEADER <= len(data):
        left = _LOG_BLOCK - pos % _LOG_BLOCK
        if left < _CHUNK_HEADER:  # block trailer too small for a chunk: padding
            pos += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != checksum:
            break  # still being written
        pos += _CHUNK_HEADER + length
        if kind == _FULL:
            payloads.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            payloads.append(pending + chunk)
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def transaction_log_complete(path: Path) -> bool:
    """Whether a run's ``.wandb`` file ends with its exit record, i.e. wandb-core has written all of it."""
    try:
        records = read_transaction_log(path)
    except (OSError, ValueError):
        return False
    return bool(records) and records[-1].WhichOneof("record_type") == "exit"


def _put(target: dict[str, Any], item: Any) -> None:
    """One history/summary item into a nested dict (0.31 sends ``nested_key``; older records ``key``)."""
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


class RunLog:
    """What one offline run wrote: config, history rows, final summary, files."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        (log_file,) = run_dir.glob("run-*.wandb")
        self.log_file = log_file
        self.records = read_transaction_log(log_file)
        kinds = [r.WhichOneof("record_type") for r in self.records]
        assert kinds[0] == "header" and "run" in kinds and kinds[-1] == "exit", kinds
        run = next(r.run for r in self.records if r.WhichOneof("record_type") == "run")
        self.run = run
        self.config = {item.key: json.loads(item.value_json) for item in run.config.update}
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        for record in self.records:
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row: dict[str, Any] = {}
                for item in record.history.item:
                    _put(row, item)
                self.history.append(row)
            elif kind == "summary":
                for item in record.summary.update:
                    _put(self.summary, item)

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        return [row for row in self.history if key in row]

    def table(self, key: str) -> dict[str, Any]:
        """The last ``key`` table logged, read from its ``files/media/table/*.table.json``."""
        (row,) = self.rows_with(key)[-1:]
        entry = row[key]
        assert entry["_type"] == "table-file", entry
        return json.loads((self.dir / "files" / entry["path"]).read_text())


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Offline W&B confined to tmp_path; the W&B service is torn down after, so the next test re-reads env."""
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP",
                "WANDB_TAGS", "WANDB_NAME", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_NOTES", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no `wandb login` on this machine's account
    yield tmp_path
    wandb.teardown()


def _png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


def _drive(logger: WandbLogger, png: Path) -> None:
    """A short run: 3 rounds, client evals at round 0, personalization, an image, a table, a summary."""
    for client in range(3):
        logger.log({"event": "client", "round": 0, "client_id": client, "eval/local_test/rouge_l": 0.1 * client,
                    "eval/local_test/loss": 2.0 - client})
    for round_ in range(3):
        logger.log({"event": "round", "round": round_, "train/loss": 1.0 / (round_ + 1),
                    "eval/global_test/rouge_l": 0.25 + 0.125 * round_, "eval/local_test/rouge_l_mean": 0.2,
                    "time/round_s": 1.5, "note": "not a number, not logged"})
    logger.log({"event": "client", "round": 2, "client_id": "c7", "eval/local_test/rouge_l": 0.75})
    logger.log({"event": "personalize", "epoch": 0, "interp_ratio": 0.5, "personalize/local_val/rouge_l_mean": 0.3})
    logger.log({"event": "personalize", "epoch": 1, "interp_ratio": 0.5, "personalize/local_val/rouge_l_mean": 0.35})
    logger.log({"event": "personalize", "epoch": 1, "interp_ratio": 1.0, "personalize/local_val/rouge_l_mean": 0.5})
    logger.log({"event": "image", "key": "plots/pareto", "path": str(png)})
    logger.log({"event": "table", "key": "tune/results", "columns": ["lr", "rouge_l"],
                "rows": [[0.1, 0.3], [0.2, 0.4]]})
    logger.log({"event": "summary", "best/rouge_l": 0.5, "best/trial": "t3"})
    logger.log({"event": "mystery", "x": 1})  # unknown kinds are ignored


def test_offline_run_is_written_and_reads_back(wandb_env, monkeypatch):
    tmp_path = wandb_env
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # present, but cfg.mode forces offline
    cfg = WandbConfig(enabled=True, project="rayfed-test", group="g1", tags=["unit", "offline"], mode="offline")
    config = {"federation": {"rounds": 3, "clients": 3}, "optim": {"lr": 0.01}, "seed": 7}
    out = tmp_path / "out"
    logger = WandbLogger(cfg, name="unit-run", config=config, directory=out, job_type="federation")
    assert logger.mode == "offline"
    run_dir = logger.run_dir
    assert run_dir is not None and run_dir.parent == out / "wandb" and run_dir.name.startswith("offline-run-")
    _drive(logger, _png(tmp_path / "pareto.png"))
    logger.close()
    logger.close()  # twice is fine
    logger.log({"event": "round", "round": 9, "train/loss": 0.0})  # after close: ignored

    assert [p.name for p in (out / "wandb").glob("offline-run-*")] == [run_dir.name]
    log = RunLog(run_dir)

    assert log.run.project == "rayfed-test" and log.run.display_name == "unit-run"
    assert log.run.run_group == "g1" and log.run.job_type == "federation"
    assert list(log.run.tags) == ["unit", "offline"]
    assert {k: v for k, v in log.config.items() if k != "_wandb"} == config

    metrics = {(m.glob_name or m.name): m.step_metric for r in log.records if r.WhichOneof("record_type") == "metric"
               for m in [r.metric]}
    assert metrics["train/*"] == metrics["eval/*"] == metrics["time/*"] == "round"
    assert metrics["personalize/*"] == "personalize/epoch"

    rounds = {row["round"]: row for row in log.rows_with("eval/global_test/rouge_l")}
    assert sorted(rounds) == [0, 1, 2]
    assert rounds[2]["eval/global_test/rouge_l"] == 0.5
    assert rounds[1]["train/loss"] == 0.5 and rounds[0]["time/round_s"] == 1.5
    assert all("note" not in row for row in log.history)
    assert all("round" not in row or row["round"] <= 2 for row in log.history)  # nothing after close

    client_rows = log.rows_with("eval/clients")
    assert [row["round"] for row in client_rows] == [0, 2]  # round 0 flushed by round 1, round 2 by close
    assert client_rows[0]["_step"] > rounds[0]["_step"]
    # The last one logged (round 2, flushed at close):
    table = log.table("eval/clients")
    assert table["columns"] == ["round", "client_id", "eval/local_test/rouge_l"]
    assert table["data"] == [[2, "c7", 0.75]]
    first_path = client_rows[0]["eval/clients"]["path"]
    first = json.loads((run_dir / "files" / first_path).read_text())
    assert first["columns"] == ["round", "client_id", "eval/local_test/loss", "eval/local_test/rouge_l"]
    assert first["data"] == [[0, 0, 2.0, 0.0], [0, 1, 1.0, 0.1], [0, 2, 0.0, 0.2]]

    # One series per ratio (ratio 1.0 logged at epoch 1 too: no key holds two ratios' values).
    key = "personalize/ratio=0.5/local_val/rouge_l_mean"
    assert [(r["personalize/epoch"], r[key]) for r in log.rows_with(key)] == [(0, 0.3), (1, 0.35)]
    assert [r["personalize/ratio=1/local_val/rouge_l_mean"]
            for r in log.rows_with("personalize/ratio=1/local_val/rouge_l_mean")] == [0.5]
    curve = log.table("personalize/curve")
    assert curve["columns"] == ["epoch", "interp_ratio", "personalize/local_val/rouge_l_mean"]
    assert curve["data"] == [[0, 0.5, 0.3], [1, 0.5, 0.35], [1, 1.0, 0.5]]
    # One chart, a line per ratio: W&B keeps a custom chart's data as the table KEY_table.
    chart = log.rows_with("personalize/curves/local_val/rouge_l_mean_table")
    assert len(chart) == 1
    lines = json.loads((run_dir / "files" / chart[0]["personalize/curves/local_val/rouge_l_mean_table"]["path"])
                       .read_text())
    assert sorted(map(tuple, lines["data"])) == [(0, "ratio 0.5", 0.3), (1, "ratio 0.5", 0.35), (1, "ratio 1", 0.5)]

    tune = log.table("tune/results")
    assert tune["columns"] == ["lr", "rouge_l"] and tune["data"] == [[0.1, 0.3], [0.2, 0.4]]

    (image_row,) = log.rows_with("plots/pareto")
    image = image_row["plots/pareto"]
    assert image["_type"] == "image-file" and (run_dir / "files" / image["path"]).is_file()

    assert log.summary["best/rouge_l"] == 0.5 and log.summary["best/trial"] == "t3"
    assert log.summary["eval/global_test/rouge_l"] == 0.5 and log.summary["round"] == 2

    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []


def test_two_loggers_in_one_process_do_not_mix(wandb_env):
    out = wandb_env / "out"
    cfg = WandbConfig(enabled=True, mode="offline")
    a = WandbLogger(cfg, name="a", config={"who": "a"}, directory=out / "a")
    b = WandbLogger(cfg, name="b", config={"who": "b"}, directory=out / "b", group="trial-group")
    for round_ in range(2):
        a.log({"event": "round", "round": round_, "train/loss": 10.0 + round_})
        b.log({"event": "round", "round": round_, "train/loss": 20.0 + round_})
    a.close()
    b.log({"event": "summary", "done": True})
    b.close()
    # Sequential runs after both finished still work (reinit="create_new").
    c = WandbLogger(cfg, name="c", config={"who": "c"}, directory=out / "c")
    c.log({"event": "round", "round": 0, "train/loss": 30.0})
    c.close()

    for name, base in (("a", 10.0), ("b", 20.0), ("c", 30.0)):
        log = RunLog(next((out / name / "wandb").glob("offline-run-*")))
        assert log.config["who"] == name
        losses = [row["train/loss"] for row in log.rows_with("train/loss")]
        assert losses == ([base] if name == "c" else [base, base + 1])
    assert RunLog(next((out / "b" / "wandb").glob("offline-run-*"))).run.run_group == "trial-group"
    assert "done" in RunLog(next((out / "b" / "wandb").glob("offline-run-*"))).summary


def test_reader_takes_a_half_written_log_as_incomplete(wandb_env):
    out = wandb_env / "out"
    blob = "x" * 80_000  # the run record alone spans three 32 KiB blocks: first, middle and last chunks
    logger = WandbLogger(WandbConfig(enabled=True, mode="offline"), name="t", config={"blob": blob}, directory=out)
    for round_ in range(50):
        logger.log({"event": "round", "round": round_, "train/loss": float(round_)})
    logger.close()
    log = RunLog(logger.run_dir)
    assert log.log_file.stat().st_size > 80_000 and log.config["blob"] == blob
    assert [row["train/loss"] for row in log.rows_with("train/loss")] == [float(r) for r in range(50)]
    full = len(log.records)
    half = wandb_env / "half.wandb"
    shutil.copyfile(log.log_file, half)
    with open(half, "r+b") as f:
        f.truncate(log.log_file.stat().st_size - 5)
    assert transaction_log_complete(log.log_file) and not transaction_log_complete(half)
    assert 0 < len(read_transaction_log(half)) < full


def test_disabled_mode_writes_nothing(wandb_env):
    out = wandb_env / "out"
    logger = WandbLogger(WandbConfig(enabled=True, mode="disabled"), name="off", config={}, directory=out)
    assert logger.run_dir is None
    logger.log({"event": "round", "round": 0, "train/loss": 1.0})
    logger.log({"event": "client", "round": 0, "client_id": 0, "m": 1.0})
    logger.log({"event": "personalize", "epoch": 0, "interp_ratio": 1.0, "personalize/x": 1.0})
    logger.log({"event": "summary", "x": 1})
    logger.close()
    assert not (out / "wandb").exists()


def test_resolve_mode(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_mode(None) == "offline"
    # `wandb login` stores the key in the netrc file: a user who ran it logs online, as with W&B alone.
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    assert resolve_mode(None) == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a login for another server does not count
    assert resolve_mode(None) == "offline"
    monkeypatch.delenv("WANDB_BASE_URL")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode(None) == "online"
    assert resolve_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None) == "disabled"
    assert resolve_mode("offline") == "offline"


def test_module_import_does_not_import_wandb():
    code = "import sys, rayfed.outputs.wandb_logger; assert 'wandb' not in sys.modules, 'wandb imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_a_run_with_personalization_logs_its_config_rounds_curves_and_plots(wandb_env, tiny_config):
    """`rayfed run` with logging.wandb.enabled: the offline run holds what a team would review."""
    from rayfed.experiment import run_experiment

    cfg = tiny_config("runtime.executor=local", "logging.wandb.enabled=true", "logging.wandb.mode=offline",
                      "personalize.enabled=true", "personalize.interp_ratios=[0,1]", "personalize.local_epochs=2",
                      "logging.wandb.tags=[ci]")
    summary = run_experiment(cfg, loggers=[])
    out = Path(cfg.output_dir)
    run_dirs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    log = RunLog(run_dirs[0])
    assert log.config["algorithm"]["rounds"] == 2 and log.config["model"]["name"] == "tiny-llama"
    assert list(log.run.tags) == ["ci"]
    rounds = {row["round"]: row for row in log.rows_with("eval/global_test/loss")}
    assert sorted(rounds) == [0, 1, 2]
    assert rounds[2]["eval/global_test/loss"] == pytest.approx(summary["final"]["loss"])
    assert log.table("eval/clients")["columns"][:2] == ["round", "client_id"]
    for ratio in (0, 1):  # epochs 0..2 of each ratio, as series of their own
        assert len(log.rows_with(f"personalize/ratio={ratio}/local_test/loss_mean")) == 3
    assert {"plots/rounds", "plots/curves"} <= {k for row in log.history for k in row}
    # Where it computed, as keys a dashboard groups runs by.
    from rayfed.runtime.machine import kind, machine

    assert log.summary["machines/workers"] == log.summary["machines/driver"] == kind(machine())
    assert log.summary["machines/hosts"] == 1
    # A later `rayfed personalize` of the run is a W&B run of its own, in the run's group.
    from rayfed.personalization.phase import run_personalization

    assert log.run.run_group == cfg.name
    run_personalization(out, ["personalize.name=again", "personalize.local_epochs=1"])
    again = RunLog(next((out / "personalize" / "again" / "wandb").glob("offline-run-*")))
    assert again.run.run_group == cfg.name and again.run.job_type == "personalize"


def test_a_resumed_run_continues_its_wandb_run(wandb_env, tiny_config):
    """A run stopped after round 1 and resumed logs rounds 2-3 under the same W&B run id (offline:
    a second directory with that id; online, W&B resumes the run itself)."""
    from rayfed.experiment import resume_experiment, run_experiment

    class StopAtRound2:
        def log(self, event):
            if event.get("event") == "round" and event.get("round") == 2:
                raise KeyboardInterrupt

        def close(self):
            pass

    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=3", "logging.wandb.enabled=true",
                      "logging.wandb.mode=offline")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, loggers=[StopAtRound2()])
    resume_experiment(cfg.output_dir, loggers=[])
    first, second = (RunLog(d) for d in sorted((Path(cfg.output_dir) / "wandb").glob("offline-run-*")))
    assert first.run.run_id == second.run.run_id == (Path(cfg.output_dir) / "wandb-run-id.txt").read_text()
    assert [row["round"] for row in first.rows_with("train/loss")] == [1]  # stopped before W&B saw round 2
    assert [row["round"] for row in second.rows_with("train/loss")] == [2, 3]


def test_an_unreachable_wandb_server_fails_in_one_line_naming_the_keys(wandb_env, monkeypatch):
    """Online with a server that does not answer used to stall 110 s and end in a traceback."""
    import socket

    from rayfed.errors import UserError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    cfg = WandbConfig(enabled=True, mode="online", init_timeout=3)
    with pytest.raises(UserError, match="no answer from .*logging.wandb.init_timeout=3 s.*logging.wandb.mode=offline"):
        WandbLogger(cfg, name="r", config={}, directory=wandb_env / "run")
