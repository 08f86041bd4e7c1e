from rayfed.core.sampling import derive_seed, sample_clients


def test_sampling_is_deterministic_sorted_and_distinct():
    a = sample_clients(100, 10, seed=3, round_idx=5)
    assert a == sample_clients(100, 10, seed=3, round_idx=5)
    assert a == sorted(a) and len(set(a)) == 10 and all(0 <= c < 100 for c in a)


def test_sampling_varies_with_round_and_seed():
    rounds = {tuple(sample_clients(100, 10, seed=0, round_idx=r)) for r in range(10)}
    assert len(rounds) == 10
    assert sample_clients(100, 10, 0, 1) != sample_clients(100, 10, 1, 1)


def test_derived_seeds_differ_by_stream_and_key():
    seeds = {derive_seed(0, "client", r, c) for r in range(5) for c in range(5)}
    assert len(seeds) == 25
    assert derive_seed(0, "client", 1) != derive_seed(0, "sampling", 1)
