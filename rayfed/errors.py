"""Errors and interruptions by kind (torch- and Ray-free, so the ``rayfed`` command imports them cheaply).

:class:`UserError` is what a person can fix (a config key, a data file, a missing cache, a run
directory): the command line prints its message as one line. Anything else is a bug and
shows its traceback. A ``ValueError`` subclass, so callers that catch bad values still do.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


class UserError(ValueError):
    """Bad input a person can fix; the message says what and how."""


class WorkerLostError(RuntimeError):
    """A worker actor died and the failure policy (``runtime.on_client_failure``) gives up."""


class Interrupted(KeyboardInterrupt):
    """The process got Ctrl-C or SIGTERM (``signum``); raised as a KeyboardInterrupt so the same
    clean-up runs for both (checkpoint kept, actors and Ray stopped) instead of Ray's abort."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_raised: list[int] = []  # the signal raise_interrupted raised, until the command line has handled it


def raise_interrupted(signum: int, frame: object) -> None:
    """A signal handler for Ctrl-C and SIGTERM: the first raises :class:`Interrupted` (a
    KeyboardInterrupt); any later one is ignored, so the clean-up it starts (the checkpoint kept,
    actors and Ray stopped, Ray's own shutdown at exit) runs to the end. A second Ctrl-C used to
    break Ray's shutdown with a traceback."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    _raised[:] = [signum]
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Where stopping is safe (before each round): raise again an interrupt that library code
    caught and dropped. Later signals are ignored after the first, so a run whose one Ctrl-C was
    lost that way could not be stopped at all."""
    if _raised:
        raise Interrupted(_raised[0])


def interrupt_handled() -> None:
    """The command line reported the interrupt (or starts afresh): nothing is left to raise again."""
    _raised.clear()


def quiet_worker_exit() -> None:
    """In a Ray worker process (a client worker, the driver actor, a Tune trial): keep a stop by
    SIGTERM silent. Ray's handler raises SystemExit in whatever Python code is running; when that
    is a weakref or ``__del__`` callback, Python cannot raise it and prints it as "Exception
    ignored" with a traceback, which Ray forwards to the terminal of a user who pressed Ctrl-C.
    Only such unraisable SystemExits are dropped; any other is printed as before."""
    if getattr(sys.unraisablehook, "rayfed_quiet", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: object) -> None:
        if not isinstance(getattr(unraisable, "exc_value", None), SystemExit):
            previous(unraisable)

    hook.rayfed_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then raise them as usual; a second one while
    held is raised at once (whoever pressed Ctrl-C twice will not wait).

    For work an interrupt would leave half done: the imports of torch, numpy, transformers and
    PEFT (transformers' lazy modules turn a Ctrl-C into a ModuleNotFoundError traceback, a
    half-imported numpy fails on the next use) and Ray's start-up (a Ctrl-C inside ``ray.init``
    cut its core worker half-built: the process printed rayfed's one line, then crashed with
    SIGSEGV at exit). Outside the main thread signals cannot be handled, and the block runs as
    it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) > 1:
            deliver(signum, frame)

    def deliver(signum: int, frame: object) -> None:
        restore()
        handler = previous[signal.Signals(signum)]
        if callable(handler):
            handler(signum, frame)  # Python's default SIGINT handler raises KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)

    def restore() -> None:  # unless a handler that ran meanwhile set its own (SIG_IGN after an interrupt)
        for sig, handler in previous.items():
            if signal.getsignal(sig) is hold:
                signal.signal(sig, handler)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        restore()
    if received:
        deliver(received[0], None)


class RayfedWarning(UserWarning):
    """Something works but deserves the user's attention; the command line prints it as one line."""


class UnauthenticatedRayWarning(RayfedWarning):
    """Ray runs without token authentication."""


class MachinesWarning(RayfedWarning):
    """A run's processes compute on more than one kind of machine (float rounding differs)."""
