"""Weights & Biases as a :class:`~rayfed.outputs.loggers.MetricLogger`.

``wandb`` is imported only when a :class:`WandbLogger` is built, so runs without W&B never pay for it.
The API key is never read here: W&B picks ``WANDB_API_KEY`` or a ``wandb login`` up itself. Without
either (and without ``cfg.mode`` or ``WANDB_MODE``) the run is written offline under ``directory/wandb``
and can be uploaded later with ``wandb sync <run_dir>``.

Events (flat dicts with an ``event`` kind):

- ``round``: numeric metrics (``train/*``, ``eval/*``, ``time/*``) logged against ``round``.
- ``client``: per-client metrics, gathered into one ``eval/clients`` table per round, logged when a
  later round starts or at close.
- ``personalize``: metrics logged against ``personalize/epoch``, one series per interpolation ratio
  (``personalize/ratio=0.5/local_val/rouge_l_mean``, so no chart zig-zags between ratios logged at
  one epoch); at close, a ``personalize/curve`` table of all of them and, per mean metric, one
  chart with a line per ratio (``personalize/curves/...``).
- ``image`` (``key``, ``path``), ``table`` (``key``, ``columns``, ``rows``), ``summary`` (any keys).
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayfed.config import WandbConfig

ROUND_PREFIXES = ("train/*", "eval/*", "time/*")
CLIENT_TABLE = "eval/clients"
PERSONALIZE_TABLE = "personalize/curve"
PERSONALIZE_STEP = "personalize/epoch"


def resolve_mode(cfg_mode: str | None) -> str:
    """``cfg.mode``, else ``WANDB_MODE``, else online when W&B has credentials (``WANDB_API_KEY`` or
    a ``wandb login``), else offline."""
    if cfg_mode:
        return cfg_mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") or logged_in() else "offline"


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def logged_in() -> bool:
    """Whether ``wandb login`` stored a key for the W&B server (``WANDB_BASE_URL``): it writes it to
    the netrc file (``$NETRC``, else ``~/.netrc``). The key itself is not read."""
    import netrc
    from urllib.parse import urlparse

    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        return netrc.netrc(str(path)).authenticators(urlparse(base_url()).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _per_ratio(key: str, ratio: Any) -> str:
    """``personalize/local_val/rouge_l_mean`` of ratio 0.5 -> ``personalize/ratio=0.5/local_val/rouge_l_mean``."""
    if ratio is None or not key.startswith("personalize/"):
        return key
    return f"personalize/ratio={ratio:g}/{key.removeprefix('personalize/')}"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real)


class WandbLogger:
    """One W&B run; methods are called on its own ``Run`` so several loggers in one process don't mix."""

    _open = 0  # runs of this process not closed yet: the last to close tears W&B's service down

    def __init__(self, cfg: WandbConfig, *, name: str, config: dict[str, Any], directory: Path,
                 group: str | None = None, job_type: str = "run", run_id: str | None = None):
        import wandb

        self._wandb = wandb
        self.mode = resolve_mode(cfg.mode)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        offline = self.mode in ("offline", "dryrun")
        settings = wandb.Settings(
            silent=True,
            console="off",  # our own console lines are not run output worth uploading
            x_save_requirements=False,
            save_code=False,
            # Offline: no system-metrics sampler (its collectors may query cloud metadata endpoints such as
            # 169.254.169.254) and no machine-info probing; nothing then attempts the network. W&B has no
            # public settings for these: x_disable_stats is the one its support docs give ("How can I
            # disable logging of system metrics"), the other two are its siblings.
            x_disable_stats=offline,
            x_disable_machine_info=offline,
            init_timeout=cfg.init_timeout,
        )
        try:
            self._run = self._init(cfg, name, config, directory, group, job_type, run_id, settings)
        except wandb.errors.CommError as err:  # online, and the server does not answer
            from rayfed.errors import UserError

            raise UserError(f"W&B: no answer from {base_url()} within logging.wandb.init_timeout="
                            f"{cfg.init_timeout:g} s ({str(err).splitlines()[0]}); log offline with "
                            f"logging.wandb.mode=offline and upload later with `wandb sync`") from None
        self._run.define_metric("round")
        for pattern in ROUND_PREFIXES:
            self._run.define_metric(pattern, step_metric="round")
        self._run.define_metric(PERSONALIZE_STEP)
        self._run.define_metric("personalize/*", step_metric=PERSONALIZE_STEP)
        self._clients: dict[int, list[dict[str, Any]]] = {}  # round -> client events not yet logged
        self._personalize: list[dict[str, Any]] = []
        self._closed = False
        WandbLogger._open += 1

    def _init(self, cfg: WandbConfig, name: str, config: dict[str, Any], directory: Path, group: str | None,
              job_type: str, run_id: str | None, settings: Any) -> Any:
        return self._wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=group or cfg.group,
            tags=list(cfg.tags) or None,
            name=name,
            config=config,
            job_type=job_type,
            dir=str(directory),
            mode=self.mode,
            reinit="create_new",
            id=run_id,  # a resumed rayfed run continues its W&B run (offline: a new directory, same id)
            resume="allow" if run_id else None,
            settings=settings,
        )

    @property
    def run_dir(self) -> Path | None:
        """Local run directory (``.../wandb/offline-run-*`` offline), or None when W&B is disabled."""
        if self._run is None or self.mode == "disabled":
            return None
        try:
            return Path(self._run.settings.sync_dir)
        except AttributeError:
            return Path(self._run.dir).parent

    def log(self, event: dict[str, Any]) -> None:
        if self._closed:
            return
        kind = event.get("event")
        if kind == "round":
            self._log_round(event)
        elif kind == "client":
            self._clients.setdefault(int(event["round"]), []).append(event)
        elif kind == "personalize":
            self._log_personalize(event)
        elif kind == "image":
            self._run.log({event["key"]: self._wandb.Image(str(event["path"]))})
        elif kind == "table":
            self._run.log({event["key"]: self._wandb.Table(columns=list(event["columns"]),
                                                            data=[list(row) for row in event["rows"]])})
        elif kind == "summary":
            self._run.summary.update({k: v for k, v in event.items() if k != "event"})

    def _log_round(self, event: dict[str, Any]) -> None:
        round_ = int(event["round"])
        self._flush_clients(before=round_)
        data = {k: v for k, v in event.items() if k not in ("event", "round") and _is_number(v)}
        data["round"] = round_
        self._run.log(data)

    def _flush_clients(self, before: int | None = None) -> None:
        """Log one ``eval/clients`` table for every gathered round earlier than ``before`` (all if None)."""
        for round_ in sorted(self._clients):
            if before is not None and round_ >= before:
                continue
            events = self._clients.pop(round_)
            metrics = sorted({k for e in events for k in e if k not in ("event", "round", "client_id")})
            rows = [[round_, e.get("client_id"), *(e.get(m) for m in metrics)]
                    for e in sorted(events, key=lambda e: str(e.get("client_id")))]
            table = self._wandb.Table(columns=["round", "client_id", *metrics], data=rows)
            self._run.log({CLIENT_TABLE: table, "round": round_})

    def _log_personalize(self, event: dict[str, Any]) -> None:
        row = {k: v for k, v in event.items() if k != "event"}
        self._personalize.append(row)
        data = {_per_ratio(k, row.get("interp_ratio")): v for k, v in row.items()
                if k not in ("epoch", "interp_ratio") and _is_number(v)}
        if "epoch" in row:
            data[PERSONALIZE_STEP] = row["epoch"]
        self._run.log(data)

    def _flush_personalize(self) -> None:
        if not self._personalize:
            return
        rows_in = self._personalize
        metrics = sorted({k for row in rows_in for k in row if k not in ("epoch", "interp_ratio")})
        rows = [[row.get("epoch"), row.get("interp_ratio"), *(row.get(m) for m in metrics)] for row in rows_in]
        charts = {}
        ratios = sorted({row["interp_ratio"] for row in rows_in if _is_number(row.get("interp_ratio"))})
        for metric in (m for m in metrics if m.endswith("_mean")):
            lines = [sorted((row["epoch"], row[metric]) for row in rows_in if row.get("interp_ratio") == r
                            and _is_number(row.get("epoch")) and _is_number(row.get(metric))) for r in ratios]
            if any(lines):
                charts[f"personalize/curves/{metric.removeprefix('personalize/')}"] = self._wandb.plot.line_series(
                    xs=[[e for e, _ in line] for line in lines], ys=[[v for _, v in line] for line in lines],
                    keys=[f"ratio {r:g}" for r in ratios], title=metric, xname="epoch")
        self._run.log({PERSONALIZE_TABLE: self._wandb.Table(columns=["epoch", "interp_ratio", *metrics], data=rows),
                       **charts})
        self._personalize = []

    def close(self) -> None:
        """Log pending tables and finish the run; safe to call twice.

        ``run.finish()`` can return before wandb-core has flushed an offline run's ``.wandb`` file (it
        is told to close the run's stream without waiting; measured: 19 of 30 complete). When this was
        the process's last open run, ``wandb.teardown()`` then waits for the service to write every
        stream out (30 of 30), so the run is complete on disk, ready to read or ``wandb sync``.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._flush_clients()
            self._flush_personalize()
        finally:
            self._run.finish()
            WandbLogger._open -= 1
            if WandbLogger._open == 0:
                self._wandb.teardown()
