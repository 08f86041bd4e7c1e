"""One writer per output directory: a process that writes a run's or a personalization's files
holds ``DIR/.rayfed.lock`` (an OS file lock, released when the process ends, even by a kill), so
a second ``rayfed run``, ``resume`` or ``personalize`` aimed at the same directory stops at once
instead of mixing its files with the first one's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rayfed.errors import UserError

LOCK = ".rayfed.lock"


@contextmanager
def writing(directory: Path, key: str) -> Iterator[None]:
    """Hold ``directory``'s lock while the block writes into it (creating the directory).

    Raises:
        UserError: ``directory`` cannot be created, or another process holds its lock; ``key``
            names the setting that chose the directory.
    """
    from filelock import FileLock, Timeout

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"key '{key}': cannot create {directory} ({err.strerror or err})") from None
    lock = FileLock(str(directory / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"key '{key}': another rayfed process is writing to {directory}; wait for it to finish "
                        f"or choose another directory") from None
    try:
        yield
    finally:
        lock.release()
