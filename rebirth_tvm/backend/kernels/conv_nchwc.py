"""Schedule rule: a blocked conv (``conv2d_NCHWc``) and what is fused after it.

The loop nest, outermost first (``c`` = the channel block = one vector register)::

    parallel  n · oc_chunk · oh                       (fused; each core takes whole rows)
      ow_outer                                        (the row in tiles of ``tile_w`` outputs)
        ic_outer · kh · kw · ic_inner                 (the reduction)
          ow_inner (unrolled)  ·  oc_block (vector)   (a tile_w × c register tile)
      epilogue (bias, ReLU, residual add) at ow_outer, written once, vectorised over oc_block

The padding is computed per parallel row block (``compute_at`` the parallel loop), so no padded
copy of the whole input is made. The accumulator tile (``tile_w`` × ``c`` floats, ≤ 8 vector
registers of the 16/32 a core has) stays in registers over the whole reduction: the inner loop
is ``tile_w`` vector fused multiply-adds per input channel, each weight vector loaded once and
each input value broadcast.

A function this rule does not recognise (no ``conv2d_NCHWc`` block, a shape the template cannot
split) is left to the next rule: it returns None and never raises.
"""

from __future__ import annotations

from tvm import s_tir

from rebirth_tvm.backend.kernels.base import InPlaceRule, extent
from rebirth_tvm.backend.kernels.layout import CONV_BLOCK

#: the widest register tile along the output width (× the channel block: the accumulators)
MAX_TILE_W = 8


def tile_width(width: int, limit: int = MAX_TILE_W) -> int:
    """The register tile along the output row: the largest divisor of ``width`` up to
    :data:`MAX_TILE_W` (a divisor keeps the tile loop free of bounds checks), or
    :data:`MAX_TILE_W` when only tiny divisors exist (a prime width: the last tile is partial)."""
    best = max(d for d in range(1, min(width, limit) + 1) if width % d == 0)
    return best if best >= 4 or width <= limit else limit


#: accumulators that hide the FMA latency (two FMA units × four cycles, and some slack)
ENOUGH_ACCUMULATORS = 10


def register_tile(width: int, chunks: int, registers: int) -> tuple[int, int]:
    """``(tile_w, oc_tile)``: outputs along the row × output-channel blocks a register tile holds.

    With 16 vector registers (AVX2): :func:`tile_width` along the row, two channel blocks where
    the accumulators take at most half the registers. With 32 (AVX-512, NEON) the tile is chosen
    among exact divisors of the row (no partial last tile, whose bounds checks sit inside the
    reduction) with up to 5/8 of the registers as accumulators (measured: 9 × 2 on a 27-wide row ran at 95% of onnxruntime, 11 × 2 on a 55-wide one at 64%, below 5 × 2): first enough
    accumulators to hide the FMA latency, then the most multiply-adds per value loaded
    (``tile_w × oc_tile / (tile_w + oc_tile)``). A 27-wide row gets 9 × 2 instead of a partial
    8 × 2 (3 × 2 would leave too few accumulators); a 13-wide one 13 × 1.
    """
    if registers >= 32:
        budget = registers * 5 // 8
        best = None
        for oc_tile in ((2, 1) if chunks % 2 == 0 else (1,)):
            for tile_w in range(1, min(width, budget // oc_tile) + 1):
                if width % tile_w:
                    continue
                accumulators = tile_w * oc_tile
                score = (min(accumulators, ENOUGH_ACCUMULATORS), accumulators / (tile_w + oc_tile))
                if best is None or score > best[0]:
                    best = (score, tile_w, oc_tile)
        if best[0][0] >= 8:
            return best[1], best[2]
        # no divisor gives enough accumulators (a prime row): a partial tile, as with 16 registers
    tile_w = tile_width(width)
    return tile_w, 2 if 2 * tile_w <= registers // 2 and chunks % 2 == 0 else 1


def vector_registers(target) -> int:
    """Vector registers a core has: 32 with AVX-512 or on aarch64, 16 otherwise (AVX2, SSE)."""
    from rebirth_tvm.backend.kernels.layout import block_size

    if str(target.attrs.get("mtriple", "")).startswith("aarch64") or block_size(target) >= 16:
        return 32
    return 16


def _choice(sch: s_tir.Schedule, default: int, options: list[int]):
    """A tunable choice among ``options`` (the default always one of them), as a schedule
    random variable a tuner samples; the plain value when there is nothing to choose."""
    options = sorted(set(options) | {default})
    if len(options) == 1:
        return default
    return sch.sample_categorical(options, [1.0 / len(options)] * len(options))


class BlockedConv(InPlaceRule):
    """Schedules a PrimFunc holding one ``conv2d_NCHWc`` block (see the module docstring)."""

    name = "blocked_conv"

    @staticmethod
    def applies_to(sch: s_tir.Schedule) -> bool:
        try:
            sch.get_sblock(CONV_BLOCK)
            return True
        except Exception:  # noqa: BLE001
            return False

    def schedule(self, sch: s_tir.Schedule, target, tunable: bool = False) -> bool:
        """Schedule ``sch`` in place; False (``sch`` untouched) when it holds no blocked conv.

        ``tunable``: the tile sizes become choices a tuner samples (``sample_categorical``, the
        default among them), so tuning searches the template's own space and its best can only
        match or beat the default.
        """
        if not self.applies_to(sch):
            return False
        conv = sch.get_sblock(CONV_BLOCK)
        loops = sch.get_loops(conv)
        if len(loops) != 8:
            return False
        n, occ, oh, ow, ocb, ic, kh, kw = loops
        width, channels, chunks = extent(sch, ow), extent(sch, ic), extent(sch, occ)
        in_block = int(sch.get(conv).reads[0].source.shape[-1])  # the data's channel block
        if not width or not channels or not chunks or channels % in_block:
            return False
        # Two output-channel blocks per tile where the registers hold them: each input value
        # broadcast once feeds two weight vectors.
        tile_w, oc_tile = register_tile(width, chunks, vector_registers(target))
        if tunable:
            tile_w = _choice(sch, tile_w, [w for w in range(2, min(width, 2 * MAX_TILE_W) + 1) if width % w == 0])
            oc_tile = _choice(sch, oc_tile, [1, 2] if chunks % 2 == 0 else [1])
        consumers = consumer_chain(sch, conv)
        for consumer in consumers[:-1]:
            sch.compute_inline(consumer)
        occ_outer, occ_inner = sch.split(occ, [None, oc_tile])
        ow_outer, ow_inner = sch.split(ow, [None, tile_w])
        ic_outer, ic_inner = sch.split(ic, [None, in_block])
        sch.reorder(n, occ_outer, oh, ow_outer, ic_outer, kh, kw, ic_inner, occ_inner, ow_inner, ocb)
        rows = sch.fuse(n, occ_outer, oh)
        sch.parallel(rows)

        place_epilogue_and_inputs(sch, conv, consumers, rows, ow_outer, vectorise_input=lambda name: name.endswith("pad"))

        init = sch.decompose_reduction(conv, ic_outer)
        sch.vectorize(sch.get_loops(init)[-1])
        # The whole register tile unrolled: LLVM turns it into tile_w × oc_tile vector FMAs (a
        # rolled channel-block loop left the narrow first conv at a third of the speed).
        for loop in (ow_inner, occ_inner, ocb):
            sch.unroll(loop)
        return True


def place_epilogue_and_inputs(sch: s_tir.Schedule, conv, consumers: list, rows, tile, vectorise_input) -> None:
    """What the conv templates share around their loop nest:

    * the epilogue (bias, ReLU, a residual add; ``consumers[:-1]`` already inlined into the last)
      is written per ``tile`` from the accumulators, vectorised;
    * what feeds the conv (the padding, a layout transform) is computed per parallel ``rows``
      block, no whole padded copy; its inner loop vectorised where ``vectorise_input(name)``.
    """
    if consumers:
        last = consumers[-1]
        sch.reverse_compute_at(last, tile, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(last)[-1])
    for producer in sch.get_producers(conv):
        name = sch.get(producer).name_hint
        try:
            sch.compute_at(producer, rows, preserve_unit_loops=True)
        except Exception:  # noqa: BLE001  (a producer that cannot move keeps its own loops)
            continue
        inner = sch.get_loops(producer)[-1]
        if vectorise_input(name) and extent(sch, inner) and extent(sch, inner) > 1:
            sch.vectorize(inner)


def consumer_chain(sch: s_tir.Schedule, block) -> list:
    """The chain of single consumers after ``block`` (bias add, ReLU, ...), in order."""
    chain = []
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            return chain
        block = consumers[0]
        chain.append(block)
