"""rebirth-tvm: DeepRebirth as a TVM pass plugin.

Data flows one way: ONNX → Relax (:func:`load`) → passes (:mod:`rebirth_tvm.passes`) →
build (:func:`build`) → run / measure → report. :func:`compile_model` does all of it.

Layers, lowest first (a module imports only its own layer and those below):
:mod:`.core` → :mod:`.frontend` → :mod:`.relearn` → :mod:`.passes` → :mod:`.backend` →
:mod:`.pipeline` → the commands and studies at the top level of this package.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys


def _interrupt_while_starting(signum, frame):
    # Nothing has been read or written yet: say so in the one line every command uses.
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    os.write(2, f"error: {what} while starting; nothing was written\n".encode())
    os._exit(128 + signum)


def _started_as_our_command() -> bool:
    """``python -m rebirth_tvm.<command>`` being imported (not a program that imports us)."""
    argv = getattr(sys, "orig_argv", [])
    return sys.argv[:1] == ["-m"] and "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith(__name__ + ".")


# Importing TVM takes a second or more, and an interrupt in that second must end the command like
# any other; rebirth_tvm.cli takes over (and removes these) once the command runs.
if _started_as_our_command():
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _interrupt_while_starting)


def _ensure_passes_package() -> None:
    """Make ``rebirth_tvm.passes`` importable from a source checkout that is not installed.

    Installs map the top-level ``passes/`` folder to ``rebirth_tvm.passes`` (pyproject's
    package-dir); running straight from the repository needs the same mapping by hand.
    """
    try:
        importlib.import_module(__name__ + ".passes")
        return
    except ModuleNotFoundError as err:
        if err.name != __name__ + ".passes":
            raise
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "passes")
    spec = importlib.util.spec_from_file_location(
        __name__ + ".passes", os.path.join(source, "__init__.py"), submodule_search_locations=[source]
    )
    if spec is None:
        raise ModuleNotFoundError(f"rebirth_tvm.passes not found (looked in {source})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


_ensure_passes_package()

from rebirth_tvm.backend.threads import use_all_cores  # noqa: E402

# TVM's runtime would run kernels on half the logical CPUs (it assumes hyper-threads): every
# core, before any kernel runs and sizes its thread pool (rebirth_tvm.backend.threads).
use_all_cores()

from rebirth_tvm import passes  # noqa: E402
from rebirth_tvm.backend.build import BuiltModel, build, run  # noqa: E402
from rebirth_tvm.backend.targets import Target, resolve_target  # noqa: E402
from rebirth_tvm.pipeline import CompileResult, RebirthOptions, compile_model, rebirth, write_result  # noqa: E402
from rebirth_tvm.core.errors import RebirthError  # noqa: E402
from rebirth_tvm.frontend.onnx_import import load  # noqa: E402

__version__ = "0.1.0"
__all__ = ["load", "build", "run", "compile_model", "write_result", "rebirth", "RebirthOptions", "passes", "BuiltModel", "CompileResult",
           "RebirthError", "Target", "resolve_target"]
