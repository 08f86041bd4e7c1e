"""Errors by kind (torch- and Ray-free, so the ``rayfed`` command imports them cheaply).

:class:`UserError` is what a person can fix (a config key, a data file, a missing cache, a run
directory): the command line prints its message as one line. Anything else is a bug and
shows its traceback. A ``ValueError`` subclass, so callers that catch bad values still do.
"""


class UserError(ValueError):
    """Bad input a person can fix; the message says what and how."""


class WorkerLostError(RuntimeError):
    """A worker actor died and the failure policy (``runtime.on_client_failure``) gives up."""
