"""Schedule rule: a blocked depthwise conv (``depthwise_conv2d_NCHWc``) and what is fused after it.

A depthwise conv does ``kh × kw`` multiply-adds per output: it is bound by memory, not by
arithmetic, so the schedule is about reading each input row once per output row and keeping
the channel block in one vector register. The loop nest, outermost first::

    parallel  n · c_chunk · oh                     (fused; each core takes whole rows)
      padding of the rows this output row reads    (no padded copy of the whole input)
      ow_outer                                     (the row in tiles of ``tile_w`` outputs)
        kh · kw                                    (the window)
          ow_inner (unrolled) · c_block (vector)   (a tile_w × c register tile)
      epilogue (bias, clip/ReLU, residual add) at ow_outer, vectorised over c_block

A function without a depthwise block, or a shape the template cannot split, is left to the next
rule: it returns None and never raises.
"""

from __future__ import annotations

from tvm import s_tir

from rebirth_tvm.backend.kernels.base import InPlaceRule, extent
from rebirth_tvm.backend.kernels.conv_nchwc import _choice, consumer_chain, place_epilogue_and_inputs, tile_width
from rebirth_tvm.backend.kernels.layout import DEPTHWISE_BLOCK


class DepthwiseConv(InPlaceRule):
    """Schedules a PrimFunc holding one ``depthwise_conv2d_NCHWc`` block (module docstring)."""

    name = "depthwise_conv"

    def schedule(self, sch: s_tir.Schedule, target=None, tunable: bool = False) -> bool:
        try:
            conv = sch.get_sblock(DEPTHWISE_BLOCK)
        except Exception:  # noqa: BLE001  (not a depthwise conv: the next rule)
            return False
        loops = sch.get_loops(conv)
        if len(loops) != 7:
            return False
        n, chunk, oh, ow, block, kh, kw = loops
        width = extent(sch, ow)
        if not width:
            return False
        tile_w = tile_width(width)
        if tunable:
            tile_w = _choice(sch, tile_w, [w for w in range(2, min(width, 16) + 1) if width % w == 0])
        consumers = consumer_chain(sch, conv)
        for consumer in consumers[:-1]:
            sch.compute_inline(consumer)
        ow_outer, ow_inner = sch.split(ow, [None, tile_w])
        sch.reorder(n, chunk, oh, ow_outer, kh, kw, ow_inner, block)
        rows = sch.fuse(n, chunk, oh)
        sch.parallel(rows)
        place_epilogue_and_inputs(sch, conv, consumers, rows, ow_outer, vectorise_input=lambda name: True)
        init = sch.decompose_reduction(conv, kh)
        sch.vectorize(sch.get_loops(init)[-1])
        # The register tile unrolled whole; LLVM makes each channel block one vector (TVM will
        # not vectorise a spatial loop under the window's reduction loops).
        sch.unroll(ow_inner)
        sch.unroll(block)
        return True
