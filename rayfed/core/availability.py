"""Simulated availability: which sampled clients report back in a round.

Real federations lose clients: devices go offline (dropout) and slow devices miss the round's
deadline (stragglers). Both are simulated here as pure, seeded functions of ``(seed, round,
client)``, so a run with dropouts is reproducible and equals a run whose sampling left out the
same clients (the dropped clients' work is never done).

- Dropout: each sampled client fails to report with probability ``dropout``, independently
  per round.
- Stragglers: each client has a persistent speed drawn once, log-normal with ``speed_sigma``
  (slow devices stay slow). A round takes a client ``1 / speed`` in units of the nominal
  client's time, and a client whose time exceeds ``deadline`` is dropped.
"""

from __future__ import annotations

import math

import numpy as np

from rayfed.core.sampling import derive_seed
from rayfed.settings import AvailabilitySettings


def client_speed(seed: int, client_id: int, sigma: float) -> float:
    """A client's persistent relative speed (1 = nominal)."""
    if sigma == 0:
        return 1.0
    return float(math.exp(sigma * np.random.default_rng(derive_seed(seed, "availability", 0, client_id))
                          .standard_normal()))


def who_reports(sampled: list[int], cfg: AvailabilitySettings, seed: int, round_idx: int,
                ) -> tuple[list[int], dict[int, str]]:
    """Split the round's sampled clients into ``(finished, {dropped client: reason})``."""
    finished: list[int] = []
    dropped: dict[int, str] = {}
    for cid in sampled:
        offline = cfg.dropout > 0 and (
            np.random.default_rng(derive_seed(seed, "availability", 1, round_idx, cid)).random() < cfg.dropout)
        if offline:
            dropped[cid] = "dropout"
        elif cfg.deadline is not None and 1.0 / client_speed(seed, cid, cfg.speed_sigma) > cfg.deadline:
            dropped[cid] = "deadline"
        else:
            finished.append(cid)
    return finished, dropped
