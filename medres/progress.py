"""Progress of long steps, decided in one place.

``progress=True`` means "the user wants progress" (not ``--quiet``, the main process); how it is shown is
decided here: a tqdm bar on stderr when stderr is a terminal, otherwise log lines (a line every
``every_s`` seconds with the count and elapsed time, and one when the stage ends), so a log file or a
pipe still shows that work is going on. ``progress=False`` shows nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["progress_style", "progress_wanted", "track", "stage", "say"]

T = TypeVar("T")
log = logging.getLogger("medres.progress")
_clock = time.perf_counter


def progress_style(progress: bool) -> str:
    """``"bar"`` (stderr is a terminal), ``"log"`` (it is a pipe or a file) or ``"off"``."""
    if not progress:
        return "off"
    try:
        return "bar" if sys.stderr.isatty() else "log"
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return "log"


def progress_wanted() -> bool:
    """Whether a command asked for progress, for code that is not handed the flag: the ``medres`` logger
    shows INFO (the commands set it to WARNING under ``--quiet`` and on every DDP rank but the first)."""
    return logging.getLogger("medres").isEnabledFor(logging.INFO)


def say(message: str) -> None:
    """One progress line: through the ``medres`` logger where a command set it up to show INFO lines,
    else on stderr."""
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info(message)
    else:
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _elapsed(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


class _Lines:
    """The log-line form of a progress bar: ``update`` counts, a line at most every ``every_s``."""

    def __init__(self, desc: str, total: int | None, unit: str, initial: int, every_s: float,
                 final: bool) -> None:
        self.desc, self.total, self.unit, self.n = desc, total, unit, initial
        self.every_s, self.final = every_s, final
        self.start = self.last = _clock()

    def _count(self) -> str:
        return f"{self.n}/{self.total} {self.unit}" if self.total is not None else f"{self.n} {self.unit}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = _clock()
        if now - self.last >= self.every_s and self.n != self.total:  # the last one: close() says it
            self.last = now
            say(f"{self.desc}: {self._count()}, {_elapsed(now - self.start)}")

    def close(self) -> None:
        seconds = _clock() - self.start
        if self.final or seconds >= self.every_s:
            say(f"{self.desc}: {self._count()} done in {_elapsed(seconds)}")


def track(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it",
          progress: bool = True, initial: int = 0, every_s: float = 15.0, final: bool = True,
          postfix: dict[str, Any] | None = None) -> Iterator[T]:
    """Yield ``iterable``'s items while showing progress (see the module's text).

    ``final``: in log form, always print the closing line (a stage); False prints it only when the
    stage took longer than ``every_s`` (a step that repeats, such as an epoch). ``postfix``: a dict the
    caller may update while iterating, shown beside the bar.
    """
    style = progress_style(progress)
    if style == "off":
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if style == "bar":
        from tqdm import tqdm

        bar = tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                   leave=False, dynamic_ncols=True, mininterval=0.5)
        for item in bar:
            yield item
            if postfix:
                bar.set_postfix(postfix, refresh=False)
        return
    lines = _Lines(desc, total, unit, initial, every_s, final)
    for item in iterable:
        yield item
        lines.update()
    lines.close()


@contextmanager
def stage(desc: str, *, progress: bool = True) -> Iterator[None]:
    """A step with no count of its own: a line when it starts and one with its time when it ends."""
    if progress_style(progress) == "off":
        yield
        return
    start = _clock()
    say(f"{desc} ...")
    yield
    say(f"{desc}: done in {_elapsed(_clock() - start)}")
