from rayfed.cli import main


def test_bad_override_exits_2_and_names_the_key(capsys):
    assert main(["validate", "configs/smoke.yaml", "algorithm.roundz=3"]) == 2
    assert "algorithm.roundz" in capsys.readouterr().err


def test_validate_prints_the_resolved_config(capsys):
    assert main(["validate", "configs/smoke.yaml", "algorithm.rounds=9"]) == 0
    out = capsys.readouterr().out
    assert "rounds: 9" in out and "output_dir: outputs/smoke" in out


def test_partition_prints_histogram_and_heterogeneity(capsys):
    assert main(["partition", "configs/smoke.yaml"]) == 0
    out = capsys.readouterr().out
    assert "heterogeneity" in out and "strings" in out


def test_plot_redraws_a_run_from_its_files_and_names_a_directory_without_any(tiny_config, tmp_path, capsys):
    from pathlib import Path

    from rayfed.experiment import run_experiment

    cfg = tiny_config("runtime.executor=local", "algorithm.rounds=1", "eval.local=false")
    run_experiment(cfg, loggers=[])
    (Path(cfg.output_dir) / "rounds.png").unlink()
    assert main(["plot", cfg.output_dir]) == 0
    assert capsys.readouterr().out.split() == [str(Path(cfg.output_dir) / name) for name in ("rounds.png",
                                                                                          "prompt_tokens.png")]
    assert (Path(cfg.output_dir) / "rounds.png").stat().st_size > 0
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "empty" in capsys.readouterr().err


def test_tune_with_a_key_that_does_not_exist_fails_before_starting_ray(tmp_path, capsys):
    bad = tmp_path / "search.yaml"
    bad.write_text("tune:\n  space:\n    personalize.l2_strenght: {type: grid, values: [0.1]}\n")
    assert main(["tune", str(bad), f"output_dir={tmp_path / 'out'}"]) == 2
    assert "tune.space.personalize.l2_strenght" in capsys.readouterr().err


def test_version_is_printed(capsys):
    import pytest

    import rayfed
    from rayfed.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"rayfed {rayfed.__version__}"


def test_a_ctrl_c_during_held_imports_is_raised_once_they_are_done():
    """A Ctrl-C while a command imports torch and transformers waits for the imports, then
    interrupts as usual (KeyboardInterrupt, or SIGTERM's Interrupted); nothing in the block is cut.
    A second Ctrl-C while the first is held interrupts at once."""
    import signal

    import pytest

    from rayfed.errors import Interrupted, interrupt_handled, interrupts_held, raise_interrupted

    finished = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), interrupts_held():
            signal.raise_signal(signal.SIGINT)
            finished.append("after the signal")
        assert finished == ["after the signal"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGTERM, raise_interrupted)
        with pytest.raises(Interrupted) as err, interrupts_held():
            signal.raise_signal(signal.SIGTERM)
        assert err.value.signum == signal.SIGTERM
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # an ignored Ctrl-C stays ignored
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
        signal.signal(signal.SIGINT, raise_interrupted)  # pressed twice: the second is not held
        finished.clear()
        with pytest.raises(Interrupted), interrupts_held():
            signal.raise_signal(signal.SIGINT)
            finished.append("after the first")
            signal.raise_signal(signal.SIGINT)
            finished.append("after the second")
        assert finished == ["after the first"]
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # the clean-up is not cut by a third
    finally:
        interrupt_handled()
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_a_worker_stopped_by_sigterm_in_a_callback_prints_no_traceback():
    """Ray's SIGTERM handler raises SystemExit in whatever runs; in a weakref callback Python
    prints it ("Exception ignored", a traceback) and Ray forwards that to the user's terminal
    after a Ctrl-C. Every rayfed worker process drops those, and only those."""
    import subprocess
    import sys

    script = """
import signal, weakref
from rayfed.errors import quiet_worker_exit
signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(1)))  # as Ray's worker does
quiet_worker_exit()
quiet_worker_exit()  # installed once, however often a process calls it

class Thing:
    pass

def stopped(_):
    signal.raise_signal(signal.SIGTERM)

def broken(_):
    raise RuntimeError("a real bug in a callback")

a, b = Thing(), Thing()
refs = [weakref.ref(a, stopped), weakref.ref(b, broken)]
del a
print("still running", flush=True)
del b
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "still running\n"
    assert "SystemExit" not in done.stderr and done.stderr.count("Traceback") == 1
    assert "RuntimeError: a real bug in a callback" in done.stderr


def test_an_override_cut_at_a_space_is_named_with_how_to_pass_it_whole(capsys):
    """`ray job submit` joins its words with spaces and the shell splits them again, so a list
    with a space arrives in two pieces: each is refused in one line naming it, never a traceback."""
    for piece, said in (("personalize.interp_ratios=[0.5,", "key 'personalize.interp_ratios': its value is not valid "
                         "YAML"), ("1]", "is not of the form key=value")):
        assert main(["validate", "configs/smoke.yaml", piece]) == 2
        err = capsys.readouterr().err
        assert said in err and "(key=[0.5,1])" in err and "quote it twice" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["study", "configs/study/tiny.yaml", "seeds=[0,", "1]", "--report-only"]) == 2
    assert "key 'seeds'" in capsys.readouterr().err
