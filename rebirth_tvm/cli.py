"""What every command-line entry point shares: one ``error:`` line, one exit-code convention,
clean interrupts.

Exit codes (the same for ``rebirth_tvm.compile``, ``.bench``, ``.accuracy`` and ``.models``):

====  ==============================================================================
0     done
1     an unexpected failure (a bug in rebirth-tvm or TVM); ``--debug`` shows the traceback
2     bad input: arguments, files, models, hooks, shapes, targets, devices; or the machine
      refused (a full disk, no permission, out of memory)
3     a check failed: the result differs from the reference, so nothing was written
130   interrupted by SIGINT (Ctrl-C); 143 by SIGTERM. Nothing partial is left behind
====  ==============================================================================

Every failure prints exactly one line on stderr, ``error: <what and why>``; with ``--debug`` the
traceback follows it. A reader that closes stdout early (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from typing import Callable


from rebirth_tvm.core.errors import CheckFailed, RebirthError
from rebirth_tvm.core.interrupts import Terminated, _received, interrupts_as_exceptions

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 3
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

#: The convention above, for ``--help`` (every command's parser ends with it).
EXIT_CODES_HELP = ("Exit codes: 0 done, 1 unexpected failure (a bug; --debug shows the traceback), 2 bad input, "
                   "3 a check failed (nothing written), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). "
                   "Every failure is one 'error:' line on stderr.")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one ``error:`` line (not the whole usage) and exit 2."""

    def error(self, message: str):
        print(f"error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="on failure, print the traceback after the error line")


def main(parser: argparse.ArgumentParser, argv, body: Callable[[argparse.Namespace], int], interrupted_note: str = "") -> int:
    """Parse ``argv`` and :func:`run` ``body(args)``; returns the exit code (``--help``: 0, a bad
    argument: 2 after its one line), so that calling a command in-process never exits Python."""
    _drop_startup_handlers()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else EXIT_BAD_INPUT
    return run(lambda: body(args), debug=getattr(args, "debug", False), interrupted_note=interrupted_note)


def _drop_startup_handlers() -> None:
    """The package's "interrupted while starting" handlers have done their job once a command runs."""
    import rebirth_tvm

    if threading.current_thread() is threading.main_thread():
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(sig) is rebirth_tvm._interrupt_while_starting:
                signal.signal(sig, default)


def run(body: Callable[[], int], debug: bool = False, interrupted_note: str = "") -> int:
    """Run a command's body under the convention above; returns the exit code."""
    try:
        with interrupts_as_exceptions():
            return body()
    except BrokenPipeError:
        # The reader of stdout went away (``| head``): nothing to report, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except BaseException as err:  # noqa: BLE001 - the one place every failure becomes one line
        if isinstance(err, (KeyboardInterrupt, Exception)):
            code, message = _classify(err, interrupted_note)
            return _fail(message, code, debug, err)
        raise  # SystemExit and the like are not failures of ours


def _classify(err: BaseException, interrupted_note: str) -> tuple[int, str]:
    """(exit code, message) for a failure."""
    signum = signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT if isinstance(err, KeyboardInterrupt) else None
    if signum is None and _received:  # the interrupt, re-labelled by a C++ layer it crossed
        signum = _received[0]
    if signum == signal.SIGTERM:
        return EXIT_SIGTERM, f"terminated (SIGTERM){interrupted_note}"
    if signum == signal.SIGINT:
        return EXIT_SIGINT, f"interrupted (Ctrl-C){interrupted_note}"
    if isinstance(err, CheckFailed):
        return EXIT_CHECK_FAILED, str(err)
    if isinstance(err, RebirthError):
        return EXIT_BAD_INPUT, str(err)
    if isinstance(err, MemoryError):
        return EXIT_BAD_INPUT, f"out of memory ({err or 'the inputs are too large for this machine'})"
    if isinstance(err, OSError):
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        return EXIT_BAD_INPUT, f"{err.strerror or err}{where}"
    text = " ".join(str(err).split()) or "no message"
    if len(text) > 300:
        text = text[:300] + "..."
    return EXIT_UNEXPECTED, f"unexpected {type(err).__name__}: {text} (a bug: rerun with --debug for the traceback and report it)"


def _fail(message: str, code: int, debug: bool, err: BaseException) -> int:
    print(f"error: {message}", file=sys.stderr)
    if debug:
        traceback.print_exception(err)
    return code
