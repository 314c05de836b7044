"""Schedule rule: every other kernel (element-wise, pooling, concat, layout transforms, the
LRN's pieces, softmax, dense): parallel outer loops, a vectorised inner loop.

TVM 0.27's CPU pipeline leaves these as plain serial loops. This rule, per function:

1. inlines every block it can into its consumers (element-wise chains become one loop nest);
2. for each block left, fuses its leading spatial loops and runs them in parallel when the
   work is worth a thread-pool launch (:data:`MIN_PARALLEL_WORK` elements), and vectorises the
   innermost loop when it is spatial (an injective block's last axis, or a blocked layout's
   channel block), splitting it to the vector width.

Reductions keep their reduction loops serial and inner (a max pool's window): exact, the same
order of operations as before. A block it cannot handle is left as it is: the rule never raises
and never fails a build; the result is always correct, if not always fast.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule

#: below this many output elements a kernel runs serially (a parallel launch costs more)
MIN_PARALLEL_WORK = 4096
#: the widest inner loop vectorised whole (a longer one is split to the vector width)
MAX_VECTOR = 64


def _extent(sch, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _iter_kinds(sch, block) -> list[str]:
    """'S' (spatial) or 'R' (reduction, or anything else) per block iter var, in order."""
    return ["S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in sch.get(block).iter_vars]


class ParallelLoops(ScheduleRule):
    """Parallel + vectorised loops for any function (see the module docstring)."""

    name = "parallel_loops"

    def __init__(self, vector_lanes: int = 8):
        self.vector_lanes = vector_lanes

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        try:
            return self._schedule(func)
        except Exception:  # noqa: BLE001  (the function stays as it came: correct, serial)
            return None

    def _schedule(self, func):
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
        if not blocks:
            return None
        for block in blocks[:-1]:  # the last block writes the output: never inlined
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001  (a reduction, or read twice: stays a block)
                pass
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            self._parallelize(sch, block)
        return sch

    def _parallelize(self, sch, block) -> None:
        loops = sch.get_loops(block)
        kinds = _iter_kinds(sch, block)
        if not loops or len(kinds) != len(loops):
            return  # loops and iter vars do not line up one to one: leave it serial
        spatial = 0
        while spatial < len(kinds) and kinds[spatial] == "S":
            spatial += 1
        if spatial == 0:
            return
        extents = [_extent(sch, loop) for loop in loops]
        if any(e is None for e in extents):
            return
        work = 1
        for e in extents[:spatial]:
            work *= e
        # The innermost loop, vectorised when it is spatial (nothing reduces inside it).
        inner, lanes = loops[-1], extents[-1]
        vectorizable = spatial == len(loops) and spatial > 1 and 1 < lanes and (lanes <= MAX_VECTOR or lanes % self.vector_lanes == 0)
        if vectorizable:
            if lanes > MAX_VECTOR:  # split only where it divides: no bounds check inside a vector
                _, inner = sch.split(inner, [None, self.vector_lanes])
            sch.vectorize(inner)
            outer = loops[:spatial - 1]
        else:
            outer = loops[:spatial]
        if work >= MIN_PARALLEL_WORK and outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False
