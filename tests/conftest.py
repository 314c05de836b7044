import os
import sys

# The test helpers (relax_builders, onnx_builders) sit beside the tests.
sys.path.insert(0, os.path.dirname(__file__))

import importlib
import subprocess

import pytest


@pytest.fixture
def cli(capfd):
    """Run a ``python -m rebirth_tvm.<module>`` command in-process, its stdout and stderr captured
    at the file-descriptor level (what a terminal would show, TVM's C++ output included); returns
    a ``subprocess.CompletedProcess``. A subprocess would add seconds of imports and prove
    nothing more about arguments, files and messages."""

    def run(*args, module="compile"):
        main = importlib.import_module(f"rebirth_tvm.{module}").main
        capfd.readouterr()
        code = main([str(a) for a in args])
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run
