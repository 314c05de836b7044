"""SIGINT and SIGTERM as exceptions, so every cleanup runs; and held back while a result is committed.

Here, below every layer, because writing a result (:mod:`rebirth_tvm.pipeline`) must hold them
back and the commands (:mod:`rebirth_tvm.cli`) turn them into exceptions.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import tvm_ffi


@tvm_ffi.register_error
class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and staging cleanup runs.

    Registered with TVM's FFI so that, raised while TVM runs Python code of ours (a pass), it
    crosses the C++ frames as itself and not as a bare RuntimeError."""


#: The signal that arrived, if any: an exception TVM's C++ layer re-labelled on the way out is
#: still reported as the interrupt it was.
_received: list[int] = []


def _raise_interrupt(signum, frame):
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def _interrupt_handler(handler):
    """SIGINT and SIGTERM go to ``handler`` inside the block, and back to what they were after.
    Signal handlers can only be set from the main thread: elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def interrupts_as_exceptions():
    """SIGINT and SIGTERM raise (KeyboardInterrupt, :class:`Terminated`), so every cleanup runs."""
    _received.clear()
    with _interrupt_handler(_raise_interrupt):
        yield


_deferring = False


@contextlib.contextmanager
def deferred_interrupts(raise_pending: bool = True):
    """Hold SIGINT and SIGTERM back for a short critical section (committing the output): a
    signal that arrives meanwhile is raised when the section ends (or, with ``raise_pending``
    False, dropped: the work it would have stopped is already done), never in the middle.
    Nested sections belong to the outermost one."""
    global _deferring
    if _deferring or threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    _deferring = True
    try:
        with _interrupt_handler(lambda signum, frame: pending.append(signum)):
            yield
    finally:
        _deferring = False
    if pending and raise_pending:
        raise Terminated() if pending[0] == signal.SIGTERM else KeyboardInterrupt()
