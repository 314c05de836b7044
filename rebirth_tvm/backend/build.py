"""Build a Relax module for a target and run it.

CPU builds (x86, arm) use :func:`rebirth_tvm.backend.kernels.cpu_pipeline`: TVM's fused CPU
pipeline, convs in a blocked layout, and a schedule for every kernel from the project's rules
(TVM 0.27 schedules nothing on CPU by default: every kernel would be plain loops). A tuning
database, when applied, comes first. CUDA builds use TVM's GPU pipeline (fusion + dlight).
The build records how its kernels were scheduled (:attr:`BuiltModel.kernels`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from typing import Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.backend.kernels import KernelCounts, cpu_pipeline
from rebirth_tvm.backend.targets import Target, resolve_target


class BuiltModel:
    """A compiled module and a VM to run it on the host."""

    def __init__(self, executable, target: Target, input_names: Sequence[str], compile_seconds: float,
                 kernels: dict | None = None):
        self.executable = executable
        self.target = target
        self.input_names = list(input_names)
        self.compile_seconds = compile_seconds
        #: how the kernels were scheduled: ``{"kernels": N, rule name: count, ...}`` (CPU builds)
        self.kernels = kernels
        self._vm = None

    @property
    def vm(self) -> relax.VirtualMachine:
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, self.target.device())
        return self._vm

    def run(self, inputs) -> np.ndarray | list[np.ndarray]:
        """Run on numpy inputs: one array, a list in input order, or ``{input name: array}``."""
        return run(self, inputs)

    def export(self, path: str) -> None:
        """Write a shared library loadable with ``tvm.runtime.load_module`` + ``relax.VirtualMachine``.

        ARM libraries are linked with the target's cross compiler (``Target.export_compiler``).
        """
        compiler = self.target.export_compiler()
        # TVM logs a "Scope Saving" warning per kernel from C++ while exporting: noise to a user.
        with _quiet_native_stderr():
            if compiler:
                self.executable.export_library(path, cc=compiler)
            else:
                self.executable.export_library(path)

    def cuda_source(self) -> str:
        """The generated CUDA C source of a cuda build."""
        if not self.target.is_cuda:
            raise RebirthError(f"a {self.target.label} build has no CUDA source")
        for module in _all_modules(self.executable.mod):
            if module.kind == "cuda":
                return module.inspect_source("cuda")
        raise RebirthError("the cuda build holds no CUDA module")


def build(mod: tvm.IRModule, target="x86", cpu: str | None = None, arch: str | None = None) -> BuiltModel:
    """Compile ``mod`` for ``target`` (a :class:`Target`, or what :func:`resolve_target` takes).

    CPU targets use the fused pipeline; CUDA uses TVM's GPU pipeline (fusion + dlight default
    schedules), which ``tvm.compile`` picks for GPU targets.
    """
    target = resolve_target(target, cpu, arch)
    counts = KernelCounts()
    built = _wrap(mod, target, lambda: _compile(mod, target, counts))
    built.kernels = counts.to_json() if target.is_cpu else None
    return built


def build_tuned(mod: tvm.IRModule, target: Target, trials: int, database_dir: str,
                max_trials_per_task: int | None = None, rpc=None, progress: bool = True):
    """Tune (tasks the database lacks) and build with the database; returns (BuiltModel, info).

    Tuning measures candidates, so it needs to run them: here (x86, or CUDA with a GPU) or on a
    device over RPC (``rpc``, a :class:`~rebirth_tvm.backend.remote.RpcDevice`).
    """
    from rebirth_tvm.backend.tuning import compile_with_database, tune

    target.require_tunable(rpc)
    start = time.perf_counter()
    database, info = tune(mod, target, trials, database_dir, max_trials_per_task=max_trials_per_task, rpc=rpc, progress=progress)
    counts = KernelCounts()
    built = _wrap(mod, target, lambda: compile_with_database(mod, target, database, counts))
    built.compile_seconds = time.perf_counter() - start
    built.kernels = counts.to_json() if target.is_cpu else None
    return built, info


def compile_for_host(mod: tvm.IRModule):
    """An executable of ``mod`` (any functions, e.g. a training module's) for this machine's CPU,
    with the project's kernels: what relearning runs on the host."""
    return _compile(mod, resolve_target("x86"), KernelCounts())


def _compile(mod, target: Target, counts: KernelCounts):
    with target.tvm:
        if target.is_cpu:
            return tvm.compile(mod, target=target.tvm, relax_pipeline=cpu_pipeline(target.tvm, counts))
        return tvm.compile(mod, target=target.tvm)  # CUDA and other GPUs: TVM's own GPU pipeline


def _wrap(mod, target, make) -> BuiltModel:
    params = mod["main"].params
    num_input = int(mod["main"].attrs["num_input"]) if mod["main"].attrs and "num_input" in mod["main"].attrs else len(params)
    start = time.perf_counter()
    try:
        # TVM's C++ warnings on a failed build ("BlockBuilder destroyed ...") say nothing the error does not.
        with _quiet_native_stderr(show_on_failure=False):
            executable = make()
    except (RebirthError, KeyboardInterrupt):
        raise
    except Exception as err:
        text = " ".join(str(err).split())
        raise RebirthError(f"TVM cannot build this model for {target.tvm.kind.name} "
                           f"({type(err).__name__}: {text[:240]}{'...' if len(text) > 240 else ''})") from err
    return BuiltModel(executable, target, [p.name for p in params[:num_input]], time.perf_counter() - start)


def check_cuda_source(built: BuiltModel) -> dict:
    """Compile a cuda build's kernels to PTX with nvcc, to prove they compile without a GPU.

    Returns ``{"compiled": True, "ptx_bytes", "seconds"}``, or ``{"compiled": None, "reason"}``
    when nvcc is not installed. Kernels that fail to compile raise :class:`RebirthError`.
    """
    import shutil

    from tvm.support import nvcc

    if shutil.which("nvcc") is None:
        return {"compiled": None, "reason": "nvcc not found; the kernels were generated but not compiled"}
    source = built.cuda_source()
    arch = str(built.target.tvm.attrs["arch"])
    start = time.perf_counter()
    try:
        with built.target.tvm:
            ptx = nvcc.compile_cuda(source, target_format="ptx", arch=arch, compiler="nvcc")
    except Exception as err:
        raise RebirthError(f"the generated CUDA kernels do not compile with nvcc for {arch}: {err}") from None
    return {"compiled": True, "ptx_bytes": len(ptx), "arch": arch, "seconds": round(time.perf_counter() - start, 2)}


def host_build_for(built: BuiltModel, mod: tvm.IRModule) -> BuiltModel:
    """``built`` itself if it runs here, else an x86 build of the same module (for checks)."""
    return built if built.target.runs_here else build(mod, "x86")


def run(built: BuiltModel, inputs) -> np.ndarray | list[np.ndarray]:
    """Run a :class:`BuiltModel`; returns one array, or a list for multi-output models."""
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if isinstance(inputs, Mapping):
        missing = [n for n in built.input_names if n not in inputs]
        if missing:
            raise RebirthError(f"missing input(s) {missing}; the model takes {built.input_names}")
        inputs = [inputs[n] for n in built.input_names]
    if len(inputs) != len(built.input_names):
        raise RebirthError(f"the model takes {len(built.input_names)} input(s), got {len(inputs)}")
    if not built.target.runs_here:
        where = "a CUDA GPU (none is available here)" if built.target.is_cuda else "an aarch64 machine"
        raise RebirthError(f"a {built.target.tvm.kind.name} build for {built.target.describe()} runs on {where}; build for x86 to run it here")
    device = built.target.device()
    result = built.vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x), device) for x in inputs])
    return _to_numpy(result)


@contextlib.contextmanager
def _quiet_native_stderr(show_on_failure: bool = True):
    """Swallow what native code writes to fd 2, unless the block fails (then it is shown, if
    ``show_on_failure``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            if show_on_failure:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _all_modules(module):
    yield module
    for child in module.imports:
        yield from _all_modules(child)


def _to_numpy(value):
    if hasattr(value, "numpy"):
        return value.numpy()
    return [_to_numpy(v) for v in value]
