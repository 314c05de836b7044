"""Dense layers at small batch (a classifier's FC): weights packed in column panels, a GEMV template.

At batch 1 a fully connected layer reads every weight once and does one multiply-add with it:
its time is the time to stream the weights from memory (AlexNet's and VGG's first FC: 150 and
400 MB). TVM's ``matmul`` keeps the weights ``[K, N]``; a thread that owns a slice of the
outputs then reads a short run of each of the K rows, a strided walk the memory system serves
far below its streaming rate. Here the constant weights are packed once, at compile time, into
panels ``[N / c, K, c]``: each panel is one contiguous stream, and a thread reads whole panels.

* :func:`legalize_matmul` legalizes a ``matmul`` whose weights are a constant ``[K, N]`` (and
  whose rows, the batch, are few) as ``dense_packed`` over the packed panels; any other matmul
  gets TVM's own legalization.
* :class:`PackedDense` schedules it: panels in parallel, the reduction over K outside, the
  ``rows × c`` accumulators in registers (unrolled; LLVM vectorises them), the bias/ReLU
  written back per panel, vectorised.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, s_tir, te
from tvm.relax.transform.legalize_ops.linear_algebra import _matmul as default_matmul

from rebirth_tvm.backend.kernels.base import InPlaceRule, extent, static_shape
from rebirth_tvm.backend.kernels.conv_nchwc import consumer_chain, vector_registers
from rebirth_tvm.backend.kernels.layout import block_size

#: the packed dense's compute block, which :class:`PackedDense` looks for
DENSE_BLOCK = "dense_packed"
#: panel widths tried, widest first: a panel's accumulators are ``rows × c`` floats
PANEL_WIDTHS = (64, 32, 16, 8)


def max_accumulators(target: tvm.target.Target | None) -> int:
    """Floats a panel's accumulators may take: half the vector registers (the other half loads
    the weights), e.g. 256 with AVX-512, 64 with AVX2 or NEON."""
    if target is None:
        return 64
    return vector_registers(target) * block_size(target) // 2


def panel_width(rows: int, columns: int, accumulators: int = 256) -> int | None:
    """The widest panel that divides ``columns`` and whose ``rows × c`` accumulators fit in
    ``accumulators`` floats; None if none."""
    for c in PANEL_WIDTHS:
        if columns % c == 0 and rows * c <= accumulators:
            return c
    return None


def dense_packed(data: te.Tensor, panels: te.Tensor) -> te.Tensor:
    """``data [M, K] · W [K, N]`` with ``W`` given as panels ``[N / c, K, c]``."""
    rows, depth = data.shape
    count, _, c = panels.shape
    k = te.reduce_axis((0, depth), name="k")
    return te.compute((rows, count * c), lambda i, j: te.sum(data[i, k] * panels[j // c, k, j % c], axis=k),
                      name=DENSE_BLOCK)


def legalize_matmul(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``matmul(x [M, K], W)`` with ``W`` a constant ``[K, N]`` and few rows: the packed dense;
    otherwise TVM's own legalization."""
    data, weight = call.args
    shape, weight_shape = static_shape(data), static_shape(weight)
    out_dtype = call.attrs.out_dtype
    if (not isinstance(weight, tvm.ir.GenericConst) or shape is None or weight_shape is None or len(shape) != 2
            or len(weight_shape) != 2 or str(data.ty.dtype) != "float32" or str(weight.ty.dtype) != "float32"
            or (out_dtype is not None and str(out_dtype) not in ("", "void", "float32"))):
        return default_matmul(bb, call)
    (rows, depth), (_, columns) = shape, weight_shape
    c = panel_width(rows, columns, max_accumulators(tvm.target.Target.current(allow_none=True)))
    if c is None:
        return default_matmul(bb, call)
    values = weight.value.numpy()
    # [K, N] → [N / c, K, c]: panel p holds columns p·c … p·c + c − 1, row after row
    panels = np.ascontiguousarray(values.reshape(depth, columns // c, c).transpose(1, 0, 2))
    return bb.call_te(dense_packed, data, relax.const(panels), primfunc_name_hint="dense_packed")


class PackedDense(InPlaceRule):
    """Schedules a PrimFunc holding one ``dense_packed`` block (see the module docstring)."""

    name = "packed_dense"

    def schedule(self, sch: s_tir.Schedule, target=None, tunable: bool = False) -> bool:
        try:
            dense = sch.get_sblock(DENSE_BLOCK)
        except Exception:  # noqa: BLE001  (not a packed dense)
            return False
        loops = sch.get_loops(dense)
        if len(loops) != 3:
            return False
        rows, columns, depth = loops
        c = int(sch.get(dense).reads[1].source.shape[-1])  # the panels' width
        if extent(sch, columns) is None or extent(sch, columns) % c or extent(sch, rows) is None:
            return False
        consumers = consumer_chain(sch, dense)
        for consumer in consumers[:-1]:
            sch.compute_inline(consumer)
        # The accumulators in a panel-sized local buffer (registers), written back per panel.
        if consumers:
            sch.set_scope(dense, 0, "local")
        else:
            consumers = [sch.cache_write(dense, 0, "local")]
        panel, lane = sch.split(columns, [None, c])
        sch.reorder(panel, depth, rows, lane)
        sch.parallel(panel)
        last = consumers[-1]
        sch.reverse_compute_at(last, panel, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(last)[-1])
        init = sch.decompose_reduction(dense, depth)
        sch.vectorize(sch.get_loops(init)[-1])
        # The accumulator tile unrolled: LLVM keeps it in vector registers across the reduction.
        sch.unroll(rows)
        sch.unroll(lane)
        return True

