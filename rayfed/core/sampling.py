"""Seed derivation and client sampling: explicit generators, never global state."""

from __future__ import annotations

import numpy as np

# Stream names keep the seeds of different consumers apart.
STREAMS = {"sampling": 1, "client": 2, "personalize": 3, "subsample": 4, "availability": 5, "personal": 6,
           "rollout": 7}


def derive_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit seed from ``(seed, stream, *keys)``, e.g. ``derive_seed(0, "client", round, cid)``."""
    state = np.random.SeedSequence([seed, STREAMS[stream], *keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def sample_clients(num_clients: int, clients_per_round: int, seed: int, round_idx: int) -> list[int]:
    """The sorted client ids that take part in ``round_idx``; a pure function of its arguments."""
    rng = np.random.default_rng(derive_seed(seed, "sampling", round_idx))
    return sorted(int(c) for c in rng.choice(num_clients, size=clients_per_round, replace=False))
