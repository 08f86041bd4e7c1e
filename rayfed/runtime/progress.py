"""Progress within a round and a personalization, drawn only on a terminal.

Worker actors count every client they finish (:class:`ClientCounter`: in this process for
``runtime.executor=local``, a zero-CPU Ray actor otherwise, the pattern of Ray's own progress
examples). While the command waits on a phase (``with phase("round 3/20: training", 8):``) a
thread reads the count twice a second and draws a tqdm bar on stderr; the phase's own line
(the round line, the personalization row) follows as before. Where stderr is no terminal (a log
file, ``ray job submit``, a Tune trial or a study's Ray task) nothing is drawn, so logs keep their
plain lines. ``RAYFED_PROGRESS=0`` turns the bars off, ``1`` on. (A search shows Tune's own
status table as its trials progress.)

Torch-free. The counter only counts: it never changes what is computed.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

_read: Callable[[], int] | None = None  # the count of the driver being used, set by counting()
_bars = 0  # bars drawn now: lines printed meanwhile go through tqdm.write, above them


class ClientCounter:
    """Clients finished so far (a Ray actor's class too: workers call ``add`` as they go)."""

    def __init__(self) -> None:
        self._done = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._done += n

    def done(self) -> int:
        return self._done


@contextmanager
def counting(read: Callable[[], int]) -> Iterator[None]:
    """Make ``read`` (the open driver's count of finished clients) what :func:`phase` draws."""
    global _read
    previous, _read = _read, read
    try:
        yield
    finally:
        _read = previous


def enabled(stream: TextIO) -> bool:
    """Bars on a terminal only, unless ``RAYFED_PROGRESS`` says otherwise."""
    setting = os.environ.get("RAYFED_PROGRESS", "")
    if setting in ("0", "1"):
        return setting == "1"
    return bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def phase(label: str, total: int | None, stream: TextIO | None = None, interval_s: float = 0.5) -> Iterator[None]:
    """A bar of the clients finished during the block (``total`` None: elapsed time only, for a
    phase that is not counted by client). Nothing without a terminal or an open driver."""
    stream = stream if stream is not None else sys.stderr
    read = _read
    if not enabled(stream) or (read is None and total is not None):
        yield
        return
    from tqdm import tqdm

    start = read() if read is not None and total is not None else 0
    bar = tqdm(total=total, desc=label, unit="client" if total is not None else "", file=stream, leave=False,
               dynamic_ncols=True, bar_format=None if total is not None else "{desc}: {elapsed}")
    stop = threading.Event()

    def draw() -> bool:
        try:
            if total is not None and read is not None:
                bar.n = min(read() - start, total)
            bar.refresh()
            return True
        except Exception:  # noqa: BLE001 - a bar must never break the run (e.g. Ray shutting down)
            return False

    def keep_drawing() -> None:
        while not stop.wait(interval_s) and draw():
            pass

    global _bars
    thread = threading.Thread(target=keep_drawing, name="rayfed-progress", daemon=True)
    thread.start()
    _bars += 1
    try:
        yield
    finally:
        _bars -= 1
        stop.set()
        thread.join()
        draw()  # where the phase ended, then cleared for the phase's own line
        bar.close()


def echo(line: str, stream: TextIO) -> None:
    """Print a line; above the bar while one is drawn (a personalization row during scoring)."""
    if _bars:
        from tqdm import tqdm

        tqdm.write(line, file=stream)
        stream.flush()
    else:
        print(line, file=stream, flush=True)
