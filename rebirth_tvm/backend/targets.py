"""A target, resolved once at the edge and carried everywhere as one :class:`Target`.

TVM 0.27 rejects CLI target strings (``"llvm -mcpu=..."``) and crashes on raw dicts in
``tvm.compile``, so every target is built here as a dict and wrapped in ``Target``.

* ``x86``: the host (LLVM), CPU detected unless ``--cpu`` names one.
* ``arm``: 64-bit ARM Linux (``aarch64-linux-gnu``, NEON), optionally a ``--cpu`` from
  :data:`ARM_CPUS`; exported with the GNU cross compiler (Debian ``g++-aarch64-linux-gnu``).
* ``cuda``: NVIDIA GPUs, ``--arch sm_XX`` (default ``sm_80``), host code for this machine.
* a JSON target dict, for anything else TVM supports.

:func:`resolve_target` turns what a user typed (``--target arm --cpu cortex-a72``) into a
:class:`Target` once; every layer below takes that object and asks it: the TVM target
(``.tvm``), its name, its architecture (the native runner's ``host`` / ``aarch64``), whether
it runs here, its export compiler, the device to run on, its label for sentences and its
description for reports. Nothing else re-derives them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass

import tvm

from rebirth_tvm.core.errors import RebirthError

TARGETS = ("x86", "arm", "cuda")
ARM_CPUS = ("cortex-a53", "cortex-a72", "cortex-a76", "neoverse-n1")
AARCH64_TRIPLE = "aarch64-linux-gnu"
#: The cross compiler for aarch64 exports; REBIRTH_AARCH64_CXX overrides it.
AARCH64_CXX = "aarch64-linux-gnu-g++"


def host_cpu() -> str:
    """The host's CPU as LLVM names it (e.g. ``skylake-avx512``)."""
    return str(tvm.target.Target.from_device(tvm.cpu()).attrs.get("mcpu", "") or "")


def resolve_target(name, cpu: str | None = None, arch: str | None = None) -> "Target":
    """What a user typed → a :class:`Target`: a name (:data:`TARGETS`) or a JSON target dict;
    a :class:`Target` or ``tvm.target.Target`` is taken as it is (``cpu``/``arch`` then unused)."""
    if isinstance(name, Target):
        return name
    if isinstance(name, tvm.target.Target):
        return Target(name, _name_of(name))
    if not isinstance(name, str):
        raise RebirthError(f"a target is a name ({', '.join(TARGETS)}), a JSON target dict or a Target, not {type(name).__name__}")
    resolved = _tvm_target(name, cpu, arch)
    return Target(resolved, name if name in TARGETS else _name_of(resolved))


def _tvm_target(name: str, cpu: str | None, arch: str | None) -> tvm.target.Target:
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


def _name_of(target: tvm.target.Target) -> str:
    if target.kind.name == "cuda":
        return "cuda"
    if target.kind.name == "llvm":
        return "arm" if str(target.attrs.get("mtriple", "")).startswith("aarch64") else "x86"
    return target.kind.name


def aarch64_compiler(check: bool = True) -> str:
    """The aarch64 cross compiler: ``REBIRTH_AARCH64_CXX`` or :data:`AARCH64_CXX`; with ``check``,
    one named by its Debian package when it is missing."""
    compiler = os.environ.get("REBIRTH_AARCH64_CXX", AARCH64_CXX)
    if check and shutil.which(compiler) is None:
        raise RebirthError(f"{compiler} not found: install the Debian package g++-aarch64-linux-gnu to build for ARM")
    return compiler


def cuda_available() -> bool:
    """A CUDA runtime is loaded and a GPU is present (never on CI)."""
    loader = tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True)
    return loader is not None and tvm.cuda(0).exist


def describe_tvm(target: tvm.target.Target) -> dict:
    """The target's attributes a report keeps (kind, CPU, triple, features, cores, CUDA arch)."""
    attrs = target.attrs
    out = {"kind": target.kind.name}
    for key in ("mcpu", "mtriple", "mattr", "num-cores", "arch"):
        if key in attrs:
            value = attrs[key]
            out[key] = [str(v) for v in value] if key == "mattr" else str(value)
    return out


def label_of(description: dict) -> str:
    """``aarch64``, ``CUDA sm_80`` or ``x86``, for sentences; from a report's ``target`` entry."""
    if str(description.get("mtriple", "")).startswith("aarch64"):
        return "aarch64"
    if description.get("kind") == "cuda":
        return f"CUDA {description.get('arch', '')}".strip()
    return "x86" if description.get("kind") == "llvm" else str(description.get("kind"))


@dataclass(frozen=True)
class Target:
    """One resolved target; see the module docstring. Make it with :func:`resolve_target`."""

    #: what TVM compiles for
    tvm: tvm.target.Target
    #: ``x86``, ``arm``, ``cuda``, or TVM's kind for a JSON target of another kind
    name: str

    @property
    def is_cuda(self) -> bool:
        return self.tvm.kind.name == "cuda"

    @property
    def is_aarch64(self) -> bool:
        return self.tvm.kind.name == "llvm" and str(self.tvm.attrs.get("mtriple", "")).startswith("aarch64")

    @property
    def is_cpu(self) -> bool:
        """An LLVM CPU target: built with the project's CPU kernels (:mod:`.kernels`)."""
        return self.tvm.kind.name == "llvm"

    @property
    def channel_block(self) -> int:
        """Channels the target's conv kernels work on at once: the CPU kernels' vector block
        (16 with AVX-512, 8 with AVX2, 4 on NEON); 1 where the build does not block channels."""
        if not self.is_cpu:
            return 1
        from rebirth_tvm.backend.kernels.layout import block_size

        return block_size(self.tvm)

    @property
    def arch(self) -> str:
        """The native runner's architecture: ``host``, ``aarch64``, or ``cuda`` (no runner)."""
        return "cuda" if self.is_cuda else "aarch64" if self.is_aarch64 else "host"

    @property
    def runs_here(self) -> bool:
        """Whether a build for this target can be executed in this process."""
        if self.is_cuda:
            return cuda_available()
        return self.tvm.kind.name == "llvm" and not self.is_aarch64 and os.uname().machine in ("x86_64", "AMD64")

    @property
    def label(self) -> str:
        return label_of(self.describe())

    def describe(self) -> dict:
        return describe_tvm(self.tvm)

    def device(self):
        """The local device a build for this target runs on."""
        return tvm.cuda(0) if self.is_cuda else tvm.cpu()

    def export_compiler(self) -> str | None:
        """The C++ compiler that links an exported library or the native runner (None: the
        host's); for aarch64 :func:`aarch64_compiler`."""
        return aarch64_compiler() if self.is_aarch64 else None

    def require_runs_here(self, what: str, rpc_hint: bool = True) -> None:
        """Refuse work that must run a build (``what`` says which) for a target that cannot run here."""
        if not self.runs_here:
            hint = ": give the device over RPC (--rpc-tracker HOST:PORT --rpc-key KEY)" if rpc_hint else ""
            raise RebirthError(f"{what}, and {self.label} builds cannot run here{hint}")

    def require_tunable(self, rpc=None) -> None:
        """Tuning measures candidates: the build must run here, or on a device over RPC."""
        if rpc is None and not self.runs_here:
            where = "a CUDA GPU" if self.is_cuda else "an aarch64 board"
            raise RebirthError(f"tuning a {self.tvm.kind.name} build for {self.describe()} needs {where} to measure on: "
                               "give one with --rpc-tracker HOST:PORT --rpc-key KEY, or use --tune-trials 0 (untuned)")

    def __str__(self) -> str:
        return self.label

