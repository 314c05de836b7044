"""Read-only views of a Relax function that every pass needs.

A pass decides *before* it changes anything: it walks the bindings of a function, follows vars to
the calls that produce them, asks who uses a var, and reads constants as numpy arrays. Deciding on
the untouched function keeps the checks simple and the reasons exact.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tvm
from tvm import relax

_RESHAPE = "relax.reshape"


def op_name(expr) -> str | None:
    """``"relax.nn.conv2d"`` for a call to that op; None for anything else."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def short_op(name: str | None) -> str:
    return (name or "?").replace("relax.nn.", "").replace("relax.", "")


class FunctionGraph:
    """Bindings, producers, users and constants of one Relax function."""

    def __init__(self, func: relax.Function):
        self.func = func
        self.bindings: list[relax.VarBinding] = [
            b for block in func.body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)
        ]
        self.value_of = {b.var: b.value for b in self.bindings}
        self.position = {b.var: i for i, b in enumerate(self.bindings)}
        self.users: dict[relax.Var, list[relax.Var]] = {b.var: [] for b in self.bindings}
        for param in func.params:
            self.users.setdefault(param, [])
        for block in func.body.blocks:
            for var, users in relax.analysis.udchain(block).items():
                self.users.setdefault(var, [])
                self.users[var] = list(dict.fromkeys([*self.users[var], *users]))
        # The function's return value counts as a use.
        for var in relax.analysis.free_vars(func.body.body):
            self.users.setdefault(var, []).append(None)

    def dataflow_bindings(self) -> Iterator[relax.VarBinding]:
        yield from self.bindings

    def producer(self, expr):
        """The value behind a var, following plain aliases (``gv = lv4``)."""
        seen = 0
        while isinstance(expr, relax.Var) and expr in self.value_of and seen < 64:
            expr = self.value_of[expr]
            seen += 1
        return expr

    def live_users(self, var: relax.Var) -> list:
        """Users of ``var``, ignoring dead tuple projections (the importer emits ``bn[1]``, ``bn[2]``)."""
        live = []
        for user in self.users.get(var, []):
            if user is not None and isinstance(self.value_of.get(user), relax.TupleGetItem) and not self.users.get(user):
                continue
            live.append(user)
        return live

    def single_use(self, var) -> bool:
        return isinstance(var, relax.Var) and len(self.live_users(var)) == 1

    def constant(self, expr) -> np.ndarray | None:
        """A constant's value as numpy: a literal, a var bound to one, or a reshape of one."""
        expr = self.producer(expr)
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        if op_name(expr) == _RESHAPE:
            inner = self.constant(expr.args[0])
            shape = [int(d) for d in expr.ty.shape] if expr.ty is not None and hasattr(expr.ty, "shape") else None
            if inner is not None and shape is not None:
                return inner.reshape(shape)
        return None

    def shared_with_others(self, expr, user_var) -> bool:
        """True when ``expr`` is a var that someone besides ``user_var`` reads."""
        if not isinstance(expr, relax.Var):
            return False
        return any(u is not user_var for u in self.live_users(expr))

    def name(self, var) -> str:
        return var.name if isinstance(var, relax.Var) else str(var)


def shape_of(expr) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return None  # symbolic


def dtype_of(expr) -> str | None:
    dtype = getattr(getattr(expr, "ty", None), "dtype", None)
    return None if dtype is None else str(dtype)


def per_channel(values: np.ndarray, channels: int, ndim: int = 4) -> np.ndarray | None:
    """``values`` as a length-``channels`` vector if it broadcasts along axis 1 only (NCHW)."""
    shape = values.shape
    if values.size == 1:
        return np.full(channels, values.reshape(()), dtype=values.dtype)
    padded = (1,) * (ndim - len(shape)) + tuple(shape)
    if len(padded) != ndim:
        return None
    if padded[1] == channels and all(d == 1 for i, d in enumerate(padded) if i != 1):
        return values.reshape(channels)
    return None


def substitute(expr, mapping):
    """``expr`` with the vars in ``mapping`` replaced (through calls, tuples and projections):
    for re-emitting a function's bindings into a new one."""
    if isinstance(expr, relax.Var):
        return mapping.get(expr, expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(f, mapping) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, mapping), expr.index)
    if isinstance(expr, relax.Call):
        return relax.Call(expr.op, [substitute(a, mapping) for a in expr.args], expr.attrs, expr.ty_args)
    return expr


def block_module(input_type, emit_body) -> tvm.IRModule:
    """``main(x) -> y`` for one input of ``input_type``, where ``emit_body(bb, x)`` emits the
    block and returns its output (a teacher block, a site's block to time)."""
    data = relax.Var("x", input_type)
    bb = relax.BlockBuilder()
    with bb.function("main", [data]):
        with bb.dataflow():
            out = bb.emit_output(emit_body(bb, data))
        bb.emit_func_output(out)
    return bb.get()


def host_function(mod: tvm.IRModule, name: str = "main"):
    """``mod`` compiled for this CPU (plain LLVM, untuned), as ``f(*arrays) -> array``.

    For the small modules the relearning runs (a teacher block, a probe up to one activation):
    compiled once, run on numpy inputs as float32.
    """
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target("llvm")), tvm.cpu())

    def run(*arrays):
        return vm[name](*[tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]).numpy()

    return run
