"""The one exception type a user sees.

Every problem with the user's input (a missing file, a model we cannot import, a shape a pass
cannot handle, an unknown target) is raised as :class:`RebirthError` with a message that fits on
one line and names the problem. The CLI prints it as ``error: <message>`` and exits non-zero;
anything else escaping is a bug in rebirth-tvm (one line too; ``--debug`` shows its traceback).
The exit codes are in :mod:`rebirth_tvm.cli`.
"""


import tvm_ffi


# Registered with TVM's FFI so that a RebirthError raised inside one of our passes, while TVM's
# pass infrastructure is running it, reaches the caller as a RebirthError (not a RuntimeError).
@tvm_ffi.register_error
class RebirthError(Exception):
    """A problem with the user's input, explained in one line."""

    def __init__(self, message: str):
        # Multi-line messages from lower layers (TVM, onnx) are folded so the CLI prints one line.
        super().__init__(" ".join(str(message).split()))


@tvm_ffi.register_error
class CheckFailed(RebirthError):
    """A check of the result failed (it differs from the reference): nothing is written.

    The CLIs exit with their own code for it (3, see :mod:`rebirth_tvm.cli`), apart from bad input."""


@tvm_ffi.register_error
class OptionError(RebirthError, ValueError):
    """A bad option value given to a pass or a stage (``pool_kernel="kepp"``): one ``error:``
    line like any bad input, and still a ``ValueError`` for code that catches those."""
