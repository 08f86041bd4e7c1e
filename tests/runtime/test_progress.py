"""Progress bars within a round and a personalization: drawn from the clients the workers have
finished, on a terminal only; logs keep their plain lines."""

import io
import re

import pytest

from rayfed.runtime import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_counts_the_clients_finished_during_its_phase_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv("RAYFED_PROGRESS", raising=False)
    counter = progress.ClientCounter()
    counter.add(5)  # an earlier phase's clients do not count in this one
    screen, log = Terminal(), io.StringIO()
    with progress.counting(counter.done):
        for stream in (screen, log):
            with progress.phase("round 3/20: training", 8, stream=stream, interval_s=0.01):
                counter.add(3)
    assert "round 3/20: training" in screen.getvalue() and "3/8" in screen.getvalue()
    assert "8/8" not in screen.getvalue()
    assert log.getvalue() == ""  # not a terminal: nothing drawn
    monkeypatch.setenv("RAYFED_PROGRESS", "0")
    quiet = Terminal()
    with progress.counting(counter.done), progress.phase("round 4/20: training", 8, stream=quiet):
        counter.add(8)
    assert quiet.getvalue() == ""


def test_a_line_printed_while_a_bar_is_drawn_lands_above_it(monkeypatch):
    monkeypatch.setenv("RAYFED_PROGRESS", "1")
    screen = Terminal()
    with progress.phase("personalize: scoring", None, stream=screen, interval_s=0.01):
        progress.echo("personalize epoch 1 | rougeL 0.2", screen)
    assert "personalize epoch 1 | rougeL 0.2\n" in screen.getvalue()
    assert "personalize: scoring" in screen.getvalue()


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_run_draws_each_rounds_clients_as_the_workers_finish_them(tiny_config, monkeypatch, capsys, executor,
                                                                    request):
    """Through the worker actors (a Ray counter actor) or in process: the bar of every round
    counts the clients trained; the round lines on stdout are unchanged."""
    from rayfed.experiment import run_experiment

    monkeypatch.setenv("RAYFED_PROGRESS", "1")
    extra = []
    if executor == "ray":
        request.getfixturevalue("ray_session")
        extra = ["runtime.num_workers=2"]
    cfg = tiny_config(f"runtime.executor={executor}", "algorithm.rounds=2", *extra)
    run_experiment(cfg)
    captured = capsys.readouterr()
    clients = cfg.algorithm.clients_per_round
    for r in (1, 2):
        counts = [int(n) for n in re.findall(rf"round {r}/2: training:[^\r\n]*?(\d+)/{clients}", captured.err)]
        assert counts and max(counts) >= (clients if executor == "local" else 1), captured.err[-2000:]
    assert "round 1/2: evaluating" in captured.err
    assert re.search(r"^round   2/2 \|", captured.out, re.M)  # the round line, as before
