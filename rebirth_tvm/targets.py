"""Named targets → ``tvm.target.Target``, and what each needs to be exported and run.

TVM 0.27 rejects CLI target strings (``"llvm -mcpu=..."``) and crashes on raw dicts in
``tvm.compile``, so every target is built here as a dict and wrapped in ``Target``.

* ``x86``: the host (LLVM), CPU detected unless ``--cpu`` names one.
* ``arm``: 64-bit ARM Linux (``aarch64-linux-gnu``, NEON), optionally a ``--cpu`` from
  :data:`ARM_CPUS`; exported with the GNU cross compiler (Debian ``g++-aarch64-linux-gnu``).
* ``cuda``: NVIDIA GPUs, ``--arch sm_XX`` (default ``sm_80``), host code for this machine.
* a JSON target dict, for anything else TVM supports.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import tvm

from .errors import RebirthError

TARGETS = ("x86", "arm", "cuda")
ARM_CPUS = ("cortex-a53", "cortex-a72", "cortex-a76", "neoverse-n1")
AARCH64_TRIPLE = "aarch64-linux-gnu"
#: The cross compiler for aarch64 exports; REBIRTH_AARCH64_CXX overrides it.
AARCH64_CXX = "aarch64-linux-gnu-g++"


def host_cpu() -> str:
    """The host's CPU as LLVM names it (e.g. ``skylake-avx512``)."""
    return str(tvm.target.Target.from_device(tvm.cpu()).attrs.get("mcpu", "") or "")


def resolve_target(name: str, cpu: str | None = None, arch: str | None = None) -> tvm.target.Target:
    """A target name (:data:`TARGETS`) or a JSON target dict → ``tvm.target.Target``."""
    if name == "x86":
        spec = {"kind": "llvm", "num-cores": os.cpu_count() or 1}
        if cpu is not None:
            _check_llvm_cpu(cpu, {"kind": "llvm"}, "target x86")
        mcpu = cpu or host_cpu()
        if mcpu:
            spec["mcpu"] = mcpu
        return _target(spec, f"unknown CPU {cpu!r} for target x86")
    if name == "arm":
        spec = {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mattr": ["+neon"]}
        if cpu:
            if cpu not in ARM_CPUS:
                raise RebirthError(f"unknown ARM CPU {cpu!r}; known: {', '.join(ARM_CPUS)}")
            spec["mcpu"] = cpu
        return _target(spec, "cannot make the arm target")
    if name == "cuda":
        arch = arch or "sm_80"
        if not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
            raise RebirthError(f"unknown CUDA architecture {arch!r}; use sm_XX, e.g. sm_80 (A100) or sm_90 (H100)")
        return _target({"kind": "cuda", "arch": arch, "host": {"kind": "llvm"}}, f"cannot make a cuda target for {arch}")
    if name.lstrip().startswith("{"):
        try:
            spec = json.loads(name)
            target = tvm.target.Target(spec)
        except Exception as err:
            raise RebirthError(f"invalid JSON target {name}: {err}") from None
        if target.kind.name == "llvm" and "mcpu" in target.attrs:
            triple = {"mtriple": str(target.attrs["mtriple"])} if "mtriple" in target.attrs else {}
            _check_llvm_cpu(str(target.attrs["mcpu"]), {"kind": "llvm", **triple}, "the JSON target")
        return target
    raise RebirthError(f"unknown target {name!r}; known: {', '.join(TARGETS)} or a JSON target dict")


def _check_llvm_cpu(cpu: str, spec: dict, label: str) -> None:
    """Refuse a CPU LLVM does not know (LLVM itself only warns and builds for a generic CPU)."""
    from tvm.target import codegen

    known = [str(c) for c in codegen.llvm_get_cpu_archlist(tvm.target.Target(spec))]
    if known and cpu not in known:
        near = [c for c in known if c.startswith(cpu[:3])][:6] or known[:6]
        raise RebirthError(f"unknown CPU {cpu!r} for {label} (LLVM knows {len(known)}, e.g. {', '.join(near)})")


def _target(spec: dict, message: str) -> tvm.target.Target:
    try:
        return tvm.target.Target(spec)
    except Exception as err:
        raise RebirthError(f"{message}: {err}") from None


def is_cuda(target: tvm.target.Target) -> bool:
    return target.kind.name == "cuda"


def is_aarch64(target: tvm.target.Target) -> bool:
    return target.kind.name == "llvm" and str(target.attrs.get("mtriple", "")).startswith("aarch64")


def cuda_available() -> bool:
    """A CUDA runtime is loaded and a GPU is present (never on CI)."""
    loader = tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True)
    return loader is not None and tvm.cuda(0).exist


def runs_here(target: tvm.target.Target) -> bool:
    """Whether a build for ``target`` can be executed in this process."""
    if is_cuda(target):
        return cuda_available()
    return target.kind.name == "llvm" and not is_aarch64(target) and os.uname().machine in ("x86_64", "AMD64")


def require_tunable(target: tvm.target.Target, rpc=None) -> None:
    """Tuning measures candidates: the build must run here, or on a device over RPC."""
    if rpc is None and not runs_here(target):
        where = "a CUDA GPU" if is_cuda(target) else "an aarch64 board"
        raise RebirthError(f"tuning a {target.kind.name} build for {describe(target)} needs {where} to measure on: "
                           "give one with --rpc-tracker HOST:PORT --rpc-key KEY, or use --tune-trials 0 (untuned)")


def export_compiler(target: tvm.target.Target) -> str | None:
    """The C++ compiler that links an exported library for ``target`` (None: the host's)."""
    if not is_aarch64(target):
        return None
    compiler = os.environ.get("REBIRTH_AARCH64_CXX", AARCH64_CXX)
    if shutil.which(compiler) is None:
        raise RebirthError(f"{compiler} not found: install the Debian package g++-aarch64-linux-gnu to export ARM libraries")
    return compiler


def describe(target: tvm.target.Target) -> dict:
    attrs = target.attrs
    out = {"kind": target.kind.name}
    for key in ("mcpu", "mtriple", "mattr", "num-cores", "arch"):
        if key in attrs:
            value = attrs[key]
            out[key] = [str(v) for v in value] if key == "mattr" else str(value)
    return out
