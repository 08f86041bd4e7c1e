"""Errors by kind (torch- and Ray-free, so the ``rayfed`` command imports them cheaply).

:class:`UserError` is what a person can fix (a config key, a data file, a missing cache, a run
directory): the command line prints its message as one line. Anything else is a bug and
shows its traceback. A ``ValueError`` subclass, so callers that catch bad values still do.
"""


class UserError(ValueError):
    """Bad input a person can fix; the message says what and how."""


class WorkerLostError(RuntimeError):
    """A worker actor died and the failure policy (``runtime.on_client_failure``) gives up."""


class Interrupted(KeyboardInterrupt):
    """The process got SIGTERM (``signum``); raised like Ctrl-C's KeyboardInterrupt so the same
    clean-up runs (checkpoint kept, actors and Ray stopped) instead of Ray's abort."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_interrupted(signum: int, frame: object) -> None:
    """A signal handler: turn SIGTERM into :class:`Interrupted`."""
    raise Interrupted(signum)


class RayfedWarning(UserWarning):
    """Something works but deserves the user's attention; the command line prints it as one line."""


class UnauthenticatedRayWarning(RayfedWarning):
    """Ray runs without token authentication."""
