"""What computed a run's numbers beyond its config and seed: each process's CPU, the kernels
torch chose for it, its device and torch's version.

The same config and seed repeat bit for bit where every process lands on the same kind of
machine. Two kinds round floats differently (AVX2 and AVX-512 sum in other orders, GPUs differ
from CPUs and from each other), and training can grow that into other numbers (docs/study.md,
"The same pilot on another machine"). So a run records where its worker actors and its driver
ran (``summary.json`` ``machines``, and its checkpoint), says so when they span several kinds (a
heterogeneous Ray cluster), and says so when a resumed run continues on other kinds than it
started on.
"""

from __future__ import annotations

import platform
import socket
from contextlib import suppress
from pathlib import Path
from typing import Any


def machine(device: Any = None) -> dict[str, str]:
    """This process: ``host``, ``cpu`` (its model name), ``torch_cpu`` (``AVX2``, ``AVX512``, ...),
    ``torch`` (version) and ``device`` (``cpu`` or the GPU's name, for a CUDA ``device``)."""
    import torch  # here: the rest of this module reads records without torch (rayfed compare)

    model = ""
    with suppress(OSError):
        model = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    device = torch.device(device or "cpu")
    return {"host": socket.gethostname(), "cpu": model or platform.processor() or platform.machine(),
            "torch_cpu": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def kind(m: dict[str, Any]) -> str:
    """What of a machine decides its float rounding, as one line (the host does not)."""
    where = "" if m.get("device", "cpu") == "cpu" else f"{m['device']}, "
    return f"{where}{m.get('cpu', '?')} ({m.get('torch_cpu', '?')}), torch {m.get('torch', '?')}"


def mixed(machines: dict[str, Any]) -> str | None:
    """A note when a run's worker actors (``machines["workers"]``) run on more than one kind of
    machine, else None. (The driver only aggregates, on its CPU: on a GPU cluster it is another kind
    by design, and the same one in every rerun.)"""
    kinds: dict[str, list[str]] = {}
    for i, m in enumerate(machines.get("workers", [])):
        kinds.setdefault(kind(m), []).append(str(i))
    if len(kinds) < 2:
        return None
    where = "; ".join(f"{_few(names)}: {k}" for k, names in kinds.items())
    return (f"this run's worker actors run on {len(kinds)} kinds of machine (workers {where}); their float rounding "
            "differs, so the same config and seed repeat bit for bit only where each worker lands on the same kind "
            "again (keep a run on one kind with runtime.label_selector and Ray node labels: docs/reliability.md)")


def kinds_line(machines: dict[str, Any] | None) -> str:
    """The kinds of machine a record's workers computed on, as one line ("" when not recorded)."""
    return "; ".join(sorted({kind(m) for m in (machines or {}).get("workers", [])}))


def dashboard_keys(machines: dict[str, Any]) -> dict[str, Any]:
    """A run's machines as flat summary keys a dashboard can group and filter runs by (W&B)."""
    return {"machines/driver": kind(machines["driver"]), "machines/workers": kinds_line(machines),
            "machines/hosts": len({m.get("host") for _, m in _processes(machines)})}


def _few(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} and {len(names) - 3} more"


def moved(before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """A note when a resumed run's processes run on other kinds of machine than those that
    started it (``before``, from its checkpoint), else None. With as many workers as before, each
    is compared with its own (a client always lives on the same worker); with another
    ``runtime.num_workers``, the kinds are compared as a set."""
    old, new = dict(_processes(before)), dict(_processes(now))
    if old.keys() == new.keys():
        changed = [f"{name}: {kind(old[name])} -> {kind(new[name])}" for name in new
                   if kind(old[name]) != kind(new[name])]
    else:
        was, became = sorted({kind(m) for m in old.values()}), sorted({kind(m) for m in new.values()})
        changed = [] if was == became else [f"{'; '.join(was)} -> {'; '.join(became)}"]
    if not old or not changed:
        return None
    return ("the resumed rounds run on other kinds of machine than the first ones (" + _few(changed) +
            "): they continue the run, but float rounding differs between kinds, so the result can differ from an "
            "uninterrupted run's in its last digits, and training can grow that")


def _processes(machines: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return ([("driver", machines["driver"])] if "driver" in machines else []) + [
        (f"worker {i}", m) for i, m in enumerate(machines.get("workers", []))]
