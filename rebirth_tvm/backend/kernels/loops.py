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

from tvm import tirx

from rebirth_tvm.backend.kernels.base import InPlaceRule, extent

#: below this many output elements a kernel runs serially (a parallel launch costs more)
MIN_PARALLEL_WORK = 4096
#: the widest inner loop vectorised whole (a longer one is split to the vector width)
MAX_VECTOR = 64


def _iter_kinds(sch, block) -> list[str]:
    """'S' (spatial) or 'R' (reduction, or anything else) per block iter var, in order."""
    return ["S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in sch.get(block).iter_vars]


class ParallelLoops(InPlaceRule):
    """Parallel + vectorised loops for any function (see the module docstring)."""

    name = "parallel_loops"

    def __init__(self, vector_lanes: int = 8):
        self.vector_lanes = vector_lanes

    def schedule(self, sch, target=None, tunable: bool = False) -> bool:
        """Schedule ``sch`` in place (nothing here is tunable); False when it has no blocks."""
        blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
        if not blocks:
            return False
        for block in blocks[:-1]:  # the last block writes the output: never inlined
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001  (a reduction, or read twice: stays a block)
                pass
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            self._parallelize(sch, block)
        return True

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
        extents = [extent(sch, loop) for loop in loops]
        if any(e is None for e in extents):
            return
        work = 1
        for e in extents:
            work *= e
        if spatial < len(loops):
            if "S" in kinds[spatial:]:
                return  # spatial loops inside reductions: leave the order alone
            self._reduction(sch, block, loops, extents, spatial, parallel=work >= MIN_PARALLEL_WORK)
            return
        outer = self._injective(sch, loops, extents)
        if work >= MIN_PARALLEL_WORK and outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])

    def _injective(self, sch, loops, extents) -> list:
        """Vectorise the innermost loop (split to the vector width when long); the rest is outer."""
        inner, lanes = loops[-1], extents[-1]
        if len(loops) > 1 and 1 < lanes and (lanes <= MAX_VECTOR or lanes % self.vector_lanes == 0):
            if lanes > MAX_VECTOR:  # split only where it divides: no bounds check inside a vector
                _, inner = sch.split(inner, [None, self.vector_lanes])
            sch.vectorize(inner)
            return loops[:-1]
        return list(loops)

    def _reduction(self, sch, block, loops, extents, spatial: int, parallel: bool) -> None:
        """A reduction (a pool's window, a dense layer's inputs): the innermost spatial loop —
        contiguous in the output — goes inside the reduction loops, so the innermost loop is a
        vector of independent outputs (LLVM vectorises it); a long one is split so that its
        outer part runs in parallel too. (Parallel first: TVM refuses to parallelise a
        reduction once a spatial loop sits under its reduction loops.)"""
        last, lanes = loops[spatial - 1], extents[spatial - 1]
        reductions = loops[spatial:]
        if lanes < 4:
            if parallel:
                sch.parallel(sch.fuse(*loops[:spatial]) if spatial > 1 else loops[0])
            return
        outer = list(loops[:spatial - 1])
        chunk = next((c for c in (64, 32, 16, self.vector_lanes) if lanes % c == 0), None)
        if lanes > MAX_VECTOR and chunk is not None:
            across, last = sch.split(last, [None, chunk])
            outer.append(across)
        if parallel and outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        try:
            sch.reorder(*reductions, last)
        except Exception:  # noqa: BLE001  (a reduction TVM will not reorder: as it is)
            return
        try:  # the initial value written in its own loop, outside the reduction
            init = sch.decompose_reduction(block, reductions[0])
            sch.vectorize(sch.get_loops(init)[-1])
        except Exception:  # noqa: BLE001  (TVM will not split this one: the init stays inside)
            pass


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False
