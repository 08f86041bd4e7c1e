from rayfed.data.synthetic import TASKS, generate_synthetic


def test_same_seed_gives_identical_data_and_other_seeds_differ():
    assert generate_synthetic(20, seed=1) == generate_synthetic(20, seed=1)
    assert generate_synthetic(20, seed=1) != generate_synthetic(20, seed=2)


def test_a_task_subset_keeps_its_examples():
    full = [ex for ex in generate_synthetic(10, seed=0) if ex.task == "synthetic/add"]
    assert generate_synthetic(10, seed=0, tasks=["add"]) == full


def test_targets_follow_the_instruction():
    by_task = {}
    for ex in generate_synthetic(30, seed=0):
        by_task.setdefault(ex.task.split("/")[1], []).append(ex)
    for ex in by_task["reverse_words"]:
        assert ex.target == " ".join(ex.input.split()[::-1])
    for ex in by_task["sort_words"]:
        assert ex.target == " ".join(sorted(ex.input.split()))
    for ex in by_task["add"]:
        a, b = ex.input.split(" + ")
        assert int(ex.target) == int(a) + int(b)
    table_a = {(ex.input, ex.target) for ex in by_task["lookup_a"]}
    table_b = {(ex.input, ex.target) for ex in by_task["lookup_b"]}
    assert not table_a & table_b  # the two tables conflict on every shared key


def test_every_task_has_a_category_and_instruction():
    assert len({cat for cat, _, _ in TASKS.values()}) >= 4
    assert all(instr for _, instr, _ in TASKS.values())
