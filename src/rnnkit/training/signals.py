"""Stopping a training run cleanly on SIGINT or SIGTERM (how a cluster pre-empts a job): the
first signal is recorded and the trainer stops at the next step boundary, saving ``last/``;
a second one stops at once."""

from __future__ import annotations

import signal
import threading


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM (how a cluster pre-empts a job). The first signal
    lets the running step end, then ``last/`` is saved (``save``); ``signum`` is the signal and
    the message says how to resume."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT, save: bool = True
                 ) -> None:
        super().__init__(message)
        self.signum, self.save = signum, save


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def set_handlers(handler: object) -> object:
    """Install ``handler`` (one function, or the dict this returns) for SIGINT and SIGTERM in
    the main thread; returns the previous handlers (None where signals cannot be set)."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    handlers = handler if isinstance(handler, dict) else dict.fromkeys(_SIGNALS, handler)
    return {signum: signal.signal(signum, h) for signum, h in handlers.items()}
