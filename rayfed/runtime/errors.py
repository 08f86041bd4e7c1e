"""Errors of the runtime that the command line reports in one line (torch- and Ray-free, so the
``rayfed`` command imports it cheaply)."""


class WorkerLostError(RuntimeError):
    """A worker actor died and the failure policy (``runtime.on_client_failure``) gives up."""
