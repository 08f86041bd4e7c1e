"""One's own data: site records in a JSONL file, one client per site (``partition.scheme: site``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from rayfed.config import ConfigError
from rayfed.data.partition import partition
from rayfed.data.sites import load_sites, write_sites
from rayfed.data.sources import federated_data
from rayfed.data.synthetic import generate_synthetic
from rayfed.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def site_pool(sizes: dict[str, int]):
    """Synthetic examples dealt to sites of the given sizes, in task order (sites hold different tasks)."""
    pool = generate_synthetic(40, seed=0)
    out, start = [], 0
    for site, n in sizes.items():
        out += [replace(ex, site=site) for ex in pool[start:start + n]]
        start += n
    return out


def by_site(**kw):
    args = dict(num_clients=3, scheme="site", unit="task", concentration=0.5, units_per_client=2,
                train_examples=30, val_examples=4, test_examples=5, global_test_examples=6,
                global_val_examples=3, seed=0)
    args.update(kw)
    return partition(site_pool({"10": 60, "2": 25, "berlin": 40}), **args)


def test_records_load_with_defaults(tmp_path):
    path = write(tmp_path / "s.jsonl", [
        {"site": "berlin", "instruction": " Classify. ", "input": "Printer jams", "target": " hardware "},
        "",
        {"site": 7, "target": "yes", "task": "faq", "id": "r-2", "meta": {"source": "crm"}},
    ])
    first, second = load_sites(path)
    assert (first.site, first.instruction, first.input, first.target) == ("berlin", "Classify.", "Printer jams",
                                                                          "hardware")
    assert (first.task, first.category) == ("unlabeled", "unlabeled")
    assert (second.site, second.task, second.category, second.instruction, second.input) == ("7", "faq", "faq", "",
                                                                                             "")


@pytest.mark.parametrize(("record", "message"), [
    ({"site": "a", "target": "x", "Input": "typo"}, "s.jsonl:2: unknown key 'Input'"),
    ({"site": "a", "input": "no target"}, "s.jsonl:2: missing key 'target'"),
    ({"target": "x"}, "s.jsonl:2: missing key 'site'"),
    ({"site": "a", "target": "  "}, "s.jsonl:2: key 'target' is empty"),
    ({"site": "", "target": "x"}, "s.jsonl:2: key 'site' must be a non-empty string"),
    ({"site": True, "target": "x"}, "s.jsonl:2: key 'site' must be a non-empty string"),
    ({"site": ["a"], "target": "x"}, "s.jsonl:2: key 'site' must be a non-empty string"),
    ({"site": "a", "target": "x", "input": 3}, "s.jsonl:2: key 'input' must be a string"),
    ("[1, 2]", "s.jsonl:2: expected a JSON object"),
    ("{not json", "s.jsonl:2: invalid JSON"),
])
def test_bad_records_name_the_line_and_key(tmp_path, record, message):
    path = write(tmp_path / "s.jsonl", [{"site": "a", "target": "fine"}, record])
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_sites(path)


def test_missing_and_empty_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path.*rayfed data sites"):
        load_sites(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="no records"):
        load_sites(write(tmp_path / "empty.jsonl", ["", "  "]))


def test_each_site_is_one_client_with_its_own_records():
    data = by_site()
    assert data.sites == ("2", "10", "berlin")  # numeric ids in numeric order, then names
    for client, site in zip(data.clients, data.sites, strict=True):
        assert {ex.site for ex in client.train + client.val + client.test} == {site}
        assert (len(client.val), len(client.test)) == (4, 5)
    # 6 + 3 global examples, round-robin over the sites: 3 from each; then the 30-example cap
    assert [len(c.train) for c in data.clients] == [25 - 3 - 9, 30, 40 - 3 - 9]
    assert sorted(ex.site for ex in data.global_test + data.global_val) == sorted(["2", "10", "berlin"] * 3)
    used = [ex for c in data.clients for ex in c.train + c.val + c.test] + [*data.global_test, *data.global_val]
    assert len(used) == len(set(used))  # no record used twice
    assert by_site() == data  # the same seed, the same split
    assert by_site(seed=1) != data


def test_site_count_and_small_sites_name_the_keys():
    with pytest.raises(UserError, match=r"partition.num_clients.*is 4.*3 site\(s\) \(2, 10, berlin\).*num_clients=3"):
        by_site(num_clients=4)
    with pytest.raises(UserError, match=r"partition.val_examples.*site\(s\) 2 \(22\).*= 23"):
        by_site(val_examples=10, test_examples=12)


def test_config_ties_the_scheme_to_the_source(tiny_config):
    with pytest.raises(ConfigError, match="partition.scheme.*data.source sites"):
        tiny_config("partition.scheme=site")
    with pytest.raises(ConfigError, match="data.path.*required when data.source is sites"):
        tiny_config("data.source=sites")


def test_written_sites_read_back_as_the_same_clients(tiny_config, tmp_path):
    cfg = tiny_config()
    original = federated_data(cfg)
    path = tmp_path / "sites.jsonl"
    assert write_sites(original, path) == sum(len(c.train + c.val + c.test) for c in original.clients)
    cfg = tiny_config("data.source=sites", f"data.path={path}", "partition.scheme=site",
                      "partition.global_test_examples=4", "partition.global_val_examples=0")
    again = federated_data(cfg)
    assert again.sites == ("client_0", "client_1", "client_2", "client_3")
    for old, new in zip(original.clients, again.clients, strict=True):
        mine = {(ex.task, ex.input, ex.target) for ex in old.train + old.val + old.test}
        theirs = {(ex.task, ex.input, ex.target) for ex in new.train + new.val + new.test + again.global_test}
        assert {(ex.task, ex.input, ex.target) for ex in new.train + new.val + new.test} <= mine <= theirs
    # A directory given as the file to write is refused before anything is written beside it.
    with pytest.raises(UserError, match="is a directory; give the JSONL file to write"):
        write_sites(original, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sites.jsonl"]


def test_a_run_on_own_data_names_its_sites(tiny_config, tmp_path):
    from rayfed.experiment import run_experiment

    records = [{"site": site, "task": ex.task, "instruction": ex.instruction, "input": ex.input, "target": ex.target}
               for site, n in (("north", 40), ("south", 24)) for ex in generate_synthetic(4, seed=len(site) + n)[:n]]
    path = write(tmp_path / "sites.jsonl", records)
    cfg = tiny_config("runtime.executor=local", "data.source=sites", f"data.path={path}", "partition.scheme=site",
                      "partition.num_clients=2", "algorithm.clients_per_round=2", "algorithm.rounds=3",
                      "partition.train_examples=64", "partition.global_test_examples=8")
    summary = run_experiment(cfg, loggers=[])
    assert summary["sites"] == {"0": "north", "1": "south"}
    assert summary["final"]["loss"] < summary["initial"]["loss"]


def test_a_relative_data_path_is_read_from_where_rayfed_started(tiny_config, tmp_path, monkeypatch):
    """A Tune trial and a study's Ray task run in directories of their own: the path they read must
    be the one the user named, from the directory the command started in."""
    from rayfed.study.config import load_study, run_config

    monkeypatch.chdir(tmp_path)
    assert tiny_config("data.source=sites", "data.path=sites.jsonl").data.path == str(tmp_path / "sites.jsonl")
    study = load_study(ROOT / "configs" / "study" / "tiny.yaml", ["experiment.data.source=sites",
                                                                  "experiment.data.path=data/sites.jsonl"])
    monkeypatch.chdir(ROOT)  # where a task may run
    assert run_config(study, "fedavg_adam", 10.0, 0, 0.05).data.path == str(tmp_path / "data" / "sites.jsonl")
