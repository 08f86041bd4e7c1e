import pytest

from rayfed.data.partition import heterogeneity, histograms, partition
from rayfed.data.synthetic import generate_synthetic

POOL = generate_synthetic(40, seed=0)  # 12 tasks x 40 = 480 examples


def split(**kw):
    args = dict(num_clients=8, scheme="dirichlet", unit="category", concentration=0.5, units_per_client=2,
                train_examples=40, val_examples=5, test_examples=10, global_test_examples=40, seed=0)
    args.update(kw)
    return partition(POOL, **args)


def all_examples(data):
    out = list(data.global_test)
    for c in data.clients:
        out += [*c.train, *c.val, *c.test]
    return out


@pytest.mark.parametrize("scheme", ["dirichlet", "k_tasks", "iid"])
def test_partition_uses_every_example_exactly_once(scheme):
    # 40 global test + 8 clients x 55 = 480: the whole pool.
    data = split(scheme=scheme)
    ids = [id(ex) for ex in all_examples(data)]
    assert len(ids) == len(set(ids)) == len(POOL)
    assert sorted(ids) == sorted(id(ex) for ex in POOL)


def test_split_sizes_and_global_test_spans_every_task():
    data = split()
    assert all((len(c.train), len(c.val), len(c.test)) == (40, 5, 10) for c in data.clients)
    assert {ex.task for ex in data.global_test} == {ex.task for ex in POOL}


def test_same_seed_same_partition():
    assert split() == split()
    assert split() != split(seed=1)


def test_heterogeneity_shrinks_as_concentration_grows():
    kw = dict(train_examples=20, val_examples=0, test_examples=5)
    values = [heterogeneity(split(concentration=a, **kw)) for a in (0.05, 1.0, 100.0)]
    assert values[0] > values[1] > values[2]
    assert heterogeneity(split(scheme="iid", **kw)) < values[0]


def test_k_tasks_limits_units_per_client():
    data = split(scheme="k_tasks", units_per_client=1, unit="task", train_examples=10, val_examples=0,
                 test_examples=5, num_clients=4)
    assert all(len(h) == 1 for h in histograms(data))


def test_too_small_pool_names_the_keys():
    with pytest.raises(ValueError, match="partition.num_clients"):
        split(num_clients=100)
