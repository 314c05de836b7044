"""Named targets → ``tvm.target.Target``.

TVM 0.27 rejects CLI target strings (``"llvm -mcpu=..."``) and crashes on raw dicts in
``tvm.compile``, so every target is built here as a dict and wrapped in ``Target``.
"""

from __future__ import annotations

import json
import os

import tvm

from .errors import RebirthError

TARGETS = ("x86",)


def host_cpu() -> str:
    """The host's CPU as LLVM names it (e.g. ``skylake-avx512``)."""
    return str(tvm.target.Target.from_device(tvm.cpu()).attrs.get("mcpu", "") or "")


def resolve_target(name: str, cpu: str | None = None) -> tvm.target.Target:
    """``"x86"`` (the host, CPU detected unless ``cpu`` is given) or a JSON target dict."""
    if name == "x86":
        spec = {"kind": "llvm", "num-cores": os.cpu_count() or 1}
        mcpu = cpu or host_cpu()
        if mcpu:
            spec["mcpu"] = mcpu
        try:
            return tvm.target.Target(spec)
        except Exception as err:
            raise RebirthError(f"unknown CPU {cpu!r} for target x86: {err}") from None
    if name.lstrip().startswith("{"):
        try:
            return tvm.target.Target(json.loads(name))
        except Exception as err:
            raise RebirthError(f"invalid JSON target {name}: {err}") from None
    raise RebirthError(f"unknown target {name!r}; known: {', '.join(TARGETS)} or a JSON target dict")


def describe(target: tvm.target.Target) -> dict:
    attrs = target.attrs
    return {"kind": target.kind.name, **{k: str(attrs[k]) for k in ("mcpu", "mtriple", "num-cores", "arch") if k in attrs}}
