"""Where a run computed: every run records its driver's and workers' machines, and says so when
its workers span kinds of machine (float rounding differs) or a resumed run continues on another
kind than it started on."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from rayfed.errors import MachinesWarning
from rayfed.experiment import resume_experiment, run_experiment
from rayfed.outputs.checkpoint import CHECKPOINT, load_run_state, save_run_state
from rayfed.runtime.machine import kind, machine, mixed, moved
from rayfed.runtime.placement import label_matches

XEON = {"host": "a", "cpu": "Intel Xeon", "torch_cpu": "AVX512", "torch": "2.13.0", "device": "cpu"}
EPYC = {"host": "b", "cpu": "AMD EPYC", "torch_cpu": "AVX2", "torch": "2.13.0", "device": "cpu"}
H100 = {**XEON, "device": "NVIDIA H100"}


def test_kinds_of_machine_that_round_alike_and_differently():
    assert kind(XEON) == kind({**XEON, "host": "another"})  # the host does not decide the rounding
    assert kind(XEON) != kind(EPYC) and kind(XEON) != kind(H100) and kind(XEON) != kind({**XEON, "torch": "2.14"})
    assert mixed({"driver": XEON, "workers": [XEON, {**XEON, "host": "z"}]}) is None
    assert mixed({"driver": XEON, "workers": [H100, H100]}) is None  # a CPU driver beside GPU workers is by design
    note = mixed({"driver": XEON, "workers": [XEON, EPYC, XEON]})
    assert "2 kinds" in note and "workers 0, 2: Intel Xeon (AVX512)" in note and "1: AMD EPYC (AVX2)" in note
    assert "runtime.label_selector" in note
    # Resumed: each worker against its own start; with another worker count, the set of kinds.
    start = {"driver": XEON, "workers": [XEON, XEON]}
    assert moved(start, {"driver": {**XEON, "host": "c"}, "workers": [XEON, XEON]}) is None
    assert "worker 1: Intel Xeon (AVX512), torch 2.13.0 -> AMD EPYC (AVX2)" in moved(
        start, {"driver": XEON, "workers": [XEON, EPYC]})
    assert moved(start, {"driver": XEON, "workers": [XEON]}) is None
    assert "AMD EPYC" in moved(start, {"driver": XEON, "workers": [EPYC]})


def test_label_selectors_read_as_ray_reads_them():
    labels = {"cpu-family": "xeon", "zone": "a"}
    assert label_matches(labels, {}) and label_matches(labels, {"cpu-family": "xeon", "zone": "a"})
    assert not label_matches(labels, {"cpu-family": "epyc"})
    assert label_matches(labels, {"cpu-family": "!epyc"}) and not label_matches(labels, {"cpu-family": "!xeon"})
    assert label_matches(labels, {"cpu-family": "in(epyc, xeon)"}) and not label_matches(labels, {"zone": "in(b,c)"})
    assert label_matches(labels, {"zone": "!in(b,c)"}) and not label_matches(labels, {"zone": "!in(a,b)"})
    assert label_matches(labels, {"gpu": "!h100"}) and not label_matches(labels, {"gpu": "h100"})  # no such label


def test_a_run_records_where_it_computed_and_a_resume_on_another_kind_says_so(tiny_config):
    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=2", "checkpoint.every=1", "personalize.enabled=true",
                      "personalize.local_epochs=1", "personalize.interp_ratios=[1]")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MachinesWarning)  # one kind of machine: nothing to say
        summary = run_experiment(cfg, loggers=[])
    here = machine()
    assert summary["machines"] == summary["personalization"]["machines"] == {"driver": here, "workers": [here]}
    assert here["torch_cpu"] == torch.backends.cpu.get_cpu_capability() and here["torch"] == torch.__version__
    out = Path(cfg.output_dir)
    # The checkpoint says where the run started: as if its first rounds had run on an AVX2 machine.
    done, state, record = load_run_state(out / CHECKPOINT)
    record["machines"]["workers"] = [{**here, "cpu": "AMD EPYC", "torch_cpu": "AVX2"}]
    save_run_state(out / CHECKPOINT, done, state, {k: v for k, v in record.items() if k != "identity"},
                   identity=record["identity"])
    (out / "summary.json").unlink()
    with pytest.warns(MachinesWarning, match=r"resumed rounds run on other kinds of machine.*worker 0: AMD EPYC "
                                             r"\(AVX2\).* -> .*\(" + here["torch_cpu"]):
        resumed = resume_experiment(out, loggers=[])
    assert resumed["machines"] == {"driver": here, "workers": [here]}
    assert resumed["machines_at_start"]["workers"][0]["cpu"] == "AMD EPYC"
    assert json.loads((out / "summary.json").read_text())["machines_at_start"] == resumed["machines_at_start"]
