"""Blocked layout for CPU convs: ``NCHW{c}c`` data, ``OIHW{c}i{c}o`` weights.

A conv in the blocked layout reads and writes ``c`` consecutive channels at once: ``c`` is the
target's vector width in floats (16 for AVX-512, 8 for AVX2, 4 for 128-bit NEON), so the
innermost loop of the conv is one vector register. Relax's ``ConvertLayout`` converts every
conv whose channels divide by ``c`` and carries the layout through ReLU, add, max pool and
concat, so layout transforms appear only at the graph's edges and around what cannot follow
(a conv whose channels do not divide, the LRN's 5-D pooling). Weights are constants: their
transform is folded at compile time (packed once).

A depthwise conv (one filter per channel) is blocked too, with ``OIHW1i{c}o`` weights, so the
layout runs through MobileNet-style blocks unbroken. The block ``c`` is chosen per network
(:func:`network_block`): the widest the vector allows that the convs doing most of the work divide.

The blocked conv is legalized here with TOPI's ``conv2d_NCHWc`` (the default legalization
refuses 5-D layouts), its compute block tagged so that :mod:`.conv_nchwc` schedules it; the
blocked depthwise conv with :func:`depthwise_conv2d_nchwc`, scheduled by :mod:`.depthwise`. A
conv the blocked computes do not cover (grouped with several channels per group, dilated, a
depthwise conv with a channel multiplier) is legalized through NCHW: correct, and scheduled by
the generic rule.
"""

from __future__ import annotations

import re

import numpy as np
import tvm
from tvm import relax, topi
from tvm.relax.transform.legalize_ops.nn import _nn_conv2d as default_conv2d

from rebirth_tvm.backend.kernels.base import rewrite_functions, static_shape

#: the name of the blocked conv's compute block (TOPI's), which the conv rule looks for
CONV_BLOCK = "conv2d_NCHWc"
#: the name of the blocked depthwise conv's compute block, which the depthwise rule looks for
DEPTHWISE_BLOCK = "depthwise_conv2d_NCHWc"


def block_size(target: tvm.target.Target) -> int:
    """Floats per vector register on ``target``: 16 with AVX-512, 8 with AVX2 (or AVX), else 4
    (SSE, 128-bit NEON). Read from the target's CPU features: LLVM's vector-width query answers
    with the host's width for any x86 target."""
    from tvm.target.codegen import target_has_features

    if str(target.attrs.get("mtriple", "")).startswith("aarch64") or target.kind.name != "llvm":
        return 4
    try:
        if target_has_features("avx512f", target):
            return 16
        if target_has_features("avx", target):
            return 8
    except Exception:  # noqa: BLE001  (features LLVM cannot tell: the narrowest common width)
        pass
    return 4


#: the share of the conv work whose channels a network's block must divide
BLOCK_COVERAGE = 0.95


def network_block(mod: tvm.IRModule, widest: int) -> int:
    """The channel block for ``mod``: the widest power of two up to ``widest`` (the vector width)
    that divides the input and output channels of the convs doing :data:`BLOCK_COVERAGE` of the
    conv work (narrower first convs left out: no block helps them).

    One block for the whole network keeps the layout blocked from conv to conv. A wider block
    that some convs cannot take sends those back to NCHW with a layout transform on each side
    and their element-wise ops with them (MobileNetV2's 24-channel layers with blocks of 16:
    a fifth of its time in transforms); halving the vector costs the compute-bound convs less.
    """
    work = _conv_work(mod)
    total = sum(w for w, _, _ in work)
    block = widest
    while block > MIN_BLOCK and total:
        covered = sum(w for w, channels, paddable in work
                      if all(c % block == 0 or (c == channels[-1] and paddable and _cheap_to_pad(c, block)) for c in channels))
        if covered >= BLOCK_COVERAGE * total:
            break
        block //= 2
    return block


#: output channels padded with zero filters up to a multiple of the block when this adds at
#: most this share of work (a 1000-class conv: 1008 filters with blocks of 16)
MAX_PADDING = 1 / 16


def _cheap_to_pad(channels: int, block: int) -> bool:
    return channels > block and (-(-channels // block) * block - channels) <= MAX_PADDING * channels


def _conv_work(mod: tvm.IRModule) -> list[tuple[int, tuple[int, ...], bool]]:
    """(multiply-adds, the channels a block must divide, whether the output channels can be
    padded) for each conv2d of ``mod`` with static shapes; a conv with fewer than
    :data:`MIN_BLOCK` input channels counts its outputs only. Output channels can be padded where
    the weights are constant (:class:`_BlockRemaining` adds zero filters and slices them off)."""
    found = []

    def visit(expr):
        if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op) or expr.op.name != "relax.nn.conv2d":
            return
        shapes = [static_shape(e) for e in (expr.args[0], expr.args[1], expr)]
        if any(s is None for s in shapes) or str(expr.attrs.data_layout) != "NCHW":
            return
        (_, in_channels, _, _), (_, per_group, kh, kw), (_, out_channels, oh, ow) = shapes
        macs = out_channels * oh * ow * per_group * kh * kw
        paddable = isinstance(expr.args[1], tvm.ir.GenericConst) and int(expr.attrs.groups) == 1
        found.append((macs, (out_channels,) if in_channels < MIN_BLOCK else (in_channels, out_channels), paddable))

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def blocked_layout(block: int) -> tvm.transform.Pass:
    """Every conv ``ConvertLayout`` can take to ``NCHW{block}c`` data: plain convs with
    ``OIHW{block}i{block}o`` weights, depthwise convs with ``OIHW1i{block}o`` (one input channel
    per filter).

    Asked for ``OIHW{block}i{block}o``, ``ConvertLayout`` refuses a depthwise conv (its weights
    have one input channel) and leaves it in NCHW between two layout transforms. Asked for
    ``OIHW1i{block}o`` it converts every conv, depthwise included, and carries the blocked
    layout through what follows; the plain convs' weights are then regrouped to
    ``OIHW{block}i{block}o`` (a transform of a constant, folded at compile time)."""
    convert = relax.transform.ConvertLayout({"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW1i{block}o"]})

    @tvm.transform.module_pass(opt_level=0, name="BlockedLayout")
    def transform(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        converted = convert(mod)
        return rewrite_functions(converted, _GroupInputChannels(converted, block))

    return transform


@relax.expr_functor.mutator
class _GroupInputChannels(relax.PyExprMutator):
    """``OIHW1i{c}o`` weights of a plain (one group) conv → ``OIHW{c}i{c}o``, the blocked conv's."""

    def __init__(self, mod, block: int):
        super().__init__(mod)
        self.block = block

    def visit_call_(self, op):
        call = super().visit_call_(op)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d":
            return call
        attrs, c = call.attrs, self.block
        if int(attrs.groups) != 1 or str(attrs.kernel_layout) != f"OIHW1i{c}o" \
                or str(attrs.data_layout) != f"NCHW{c}c":
            return call
        weight = self.builder_.emit(relax.op.layout_transform(
            call.args[1], index_map=lambda oo, i, h, w, one, oi: (oo, i // c, h, w, i % c, oi)))
        return relax.op.nn.conv2d(call.args[0], weight, attrs.strides, attrs.padding, attrs.dilation, 1,
                                  str(attrs.data_layout), f"OIHW{c}i{c}o", str(attrs.out_layout), _out_dtype(call))


def _largest_divisor(n: int, limit: int) -> int:
    """The channel block for ``n`` channels: the largest power of two dividing ``n`` up to
    ``limit`` when that is a useful vector (≥ 4: 24 channels → 8, not a 12-wide vector LLVM
    would split), else the largest divisor."""
    power = max(d for d in (1, 2, 4, 8, 16, 32, 64) if d <= limit and n % d == 0)
    return power if power >= MIN_BLOCK else max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


#: a conv whose output channels give a block narrower than this stays in NCHW
MIN_BLOCK = 4


@relax.expr_functor.mutator
class _BlockRemaining(relax.PyExprMutator):
    def __init__(self, mod, block: int):
        super().__init__(mod)
        self.block = block

    def visit_call_(self, op):
        call = super().visit_call_(op)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d":
            return call
        attrs = call.attrs
        if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCHW", "OIHW", "NCHW") \
                or [int(d) for d in attrs.dilation] != [1, 1]:
            return call
        data, weight = call.args
        shape, weight_shape = static_shape(data), static_shape(weight)
        if shape is None or weight_shape is None:
            return call
        in_channels, out_channels = shape[1], weight_shape[0]
        if int(attrs.groups) == in_channels == out_channels and weight_shape[1] == 1:
            return self._depthwise(call, data, weight, in_channels)
        if int(attrs.groups) != 1:
            return call
        ic, oc = _largest_divisor(in_channels, self.block), _largest_divisor(out_channels, self.block)
        padded = out_channels
        if oc < self.block and out_channels > self.block and isinstance(weight, tvm.ir.GenericConst):
            # Output channels with no good block (a 1000-class conv: blocks of 10): zero filters
            # up to a multiple of the block, and the extra channels sliced off after.
            padded, oc = -(-out_channels // self.block) * self.block, self.block
            values = weight.value.numpy()
            weight = relax.const(np.concatenate([values, np.zeros((padded - out_channels, *values.shape[1:]), values.dtype)]))
        if oc < MIN_BLOCK:
            return call
        data = self.builder_.emit(relax.op.layout_transform(data, index_map=lambda n, c, h, w: (n, c // ic, h, w, c % ic)))
        weight = self.builder_.emit(relax.op.layout_transform(
            weight, index_map=lambda o, i, h, w: (o // oc, i // ic, h, w, i % ic, o % oc)))
        conv = self.builder_.emit(relax.op.nn.conv2d(data, weight, attrs.strides, attrs.padding, attrs.dilation, 1,
                                                     f"NCHW{ic}c", f"OIHW{ic}i{oc}o", f"NCHW{oc}c", _out_dtype(call)))
        out = relax.op.layout_transform(conv, index_map=lambda n, c, h, w, b: (n, c * oc + b, h, w))
        if padded != out_channels:
            out = relax.op.strided_slice(self.builder_.emit(out), axes=[1], begin=[0], end=[out_channels])
        return out

    def _depthwise(self, call, data, weight, channels: int):
        """A depthwise conv whose channels do not divide by the block (24 channels with blocks of
        16): blocked by the largest useful divisor (8), so the depthwise template takes it."""
        c = _largest_divisor(channels, self.block)
        if c < MIN_BLOCK:
            return call
        attrs = call.attrs
        data = self.builder_.emit(relax.op.layout_transform(data, index_map=lambda n, ch, h, w: (n, ch // c, h, w, ch % c)))
        weight = self.builder_.emit(relax.op.layout_transform(
            weight, index_map=lambda o, i, h, w: (o // c, i, h, w, i, o % c)))
        conv = self.builder_.emit(relax.op.nn.conv2d(data, weight, attrs.strides, attrs.padding, attrs.dilation, channels,
                                                     f"NCHW{c}c", f"OIHW1i{c}o", f"NCHW{c}c", _out_dtype(call)))
        return relax.op.layout_transform(conv, index_map=lambda n, ch, h, w, b: (n, ch * c + b, h, w))


#: a grouped conv with at most this many groups is split into one conv per group
MAX_SPLIT_GROUPS = 8


@relax.expr_functor.mutator
class _SplitGroups(relax.PyExprMutator):
    def visit_call_(self, op):
        call = super().visit_call_(op)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d":
            return call
        attrs = call.attrs
        groups = int(attrs.groups)
        data, weight = call.args
        if groups == 1 or groups > MAX_SPLIT_GROUPS or str(attrs.data_layout) != "NCHW" \
                or str(attrs.kernel_layout) != "OIHW" or str(attrs.out_layout) != "NCHW":
            return call
        shape, weight_shape = static_shape(data), static_shape(weight)
        if shape is None or weight_shape is None:
            return call  # symbolic channels: left as it is
        in_per_group = shape[1] // groups
        out_per_group = weight_shape[0] // groups
        if in_per_group == 1:
            return call  # depthwise: one conv per channel would be no better
        parts = []
        for g in range(groups):
            x = self.builder_.emit(relax.op.strided_slice(data, axes=[1], begin=[g * in_per_group], end=[(g + 1) * in_per_group]))
            w = self.builder_.emit(relax.op.strided_slice(weight, axes=[0], begin=[g * out_per_group], end=[(g + 1) * out_per_group]))
            parts.append(self.builder_.emit(relax.op.nn.conv2d(x, w, attrs.strides, attrs.padding, attrs.dilation, 1,
                                                               "NCHW", "OIHW", "NCHW", _out_dtype(call))))
        return relax.op.concat(parts, axis=1)


@tvm.transform.module_pass(opt_level=0, name="SplitGroupedConvs")
def split_grouped_convs(mod: tvm.IRModule, ctx) -> tvm.IRModule:
    """A grouped conv (AlexNet's two groups) as one conv per group and a concat: exact, and each
    part a plain conv the blocked template takes (grouped convs have no blocked compute)."""
    return rewrite_functions(mod, _SplitGroups(mod))


def block_remaining_convs(block: int) -> tvm.transform.Pass:
    """Convs ``ConvertLayout`` left in NCHW (channels that do not divide by ``block``, like the
    3-channel first conv; depthwise ones too): blocked too, each with its own blocks (the largest divisors of its
    channel counts up to ``block``), between layout transforms to and from NCHW."""

    @tvm.transform.module_pass(opt_level=0, name="BlockRemainingConvs")
    def transform(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return rewrite_functions(mod, _BlockRemaining(mod, block))

    return transform


def _is_blocked(layout: str) -> bool:
    return len(layout) > 4


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A conv2d in any layout: the blocked compute for a blocked one, TVM's own otherwise."""
    attrs = call.attrs
    data_layout, kernel_layout, out_layout = str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)
    if not _is_blocked(data_layout):
        return default_conv2d(bb, call)  # the default, for plain layouts
    dilation = [int(d) for d in attrs.dilation]
    if int(attrs.groups) == 1 and dilation == [1, 1] and _is_blocked(out_layout):
        out_dtype = _out_dtype(call)
        return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1], [int(s) for s in attrs.strides],
                          [int(p) for p in attrs.padding], dilation, data_layout, out_layout, out_dtype,
                          primfunc_name_hint="conv2d_nchwc")
    if _is_depthwise(call) and _is_blocked(out_layout) and _block_of(data_layout) == _block_of(out_layout):
        return bb.call_te(depthwise_conv2d_nchwc, call.args[0], call.args[1], [int(s) for s in attrs.strides],
                          [int(p) for p in attrs.padding], dilation, _out_dtype(call),
                          primfunc_name_hint="depthwise_conv2d_nchwc")
    # Not covered by the blocked compute: through NCHW and TVM's own legalization.
    data = bb.emit(relax.op.layout_transform(call.args[0], index_map=_unblock_map(data_layout)))
    weight = bb.emit(relax.op.layout_transform(call.args[1], index_map=_unblock_weight_map(kernel_layout)))
    plain = relax.op.nn.conv2d(data, weight, attrs.strides, attrs.padding, attrs.dilation, int(attrs.groups),
                               "NCHW", "OIHW", "NCHW", _out_dtype(call))
    out = bb.emit(default_conv2d(bb, bb.normalize(plain)))
    return relax.op.layout_transform(out, index_map=_block_map(out_layout)) if _is_blocked(out_layout) else out


def _out_dtype(call: relax.Call) -> str:
    given = call.attrs.out_dtype
    text = "" if given is None else str(given)
    return text if text not in ("", "None", "void") else str(call.args[0].ty.dtype)


def _block_of(layout: str) -> int:
    return int(re.search(r"\d+", layout).group())


def _unblock_map(layout: str):
    """NCHW{c}c → NCHW."""
    c = _block_of(layout)
    return lambda n, co, h, w, ci: (n, co * c + ci, h, w)


def _block_map(layout: str):
    """NCHW → NCHW{c}c."""
    c = _block_of(layout)
    return lambda n, ch, h, w: (n, ch // c, h, w, ch % c)


def _unblock_weight_map(layout: str):
    """OIHW{a}i{b}o → OIHW."""
    a, b = (int(x) for x in re.fullmatch(r"OIHW(\d+)i(\d+)o", layout).groups())
    return lambda oo, io, h, w, ii, oi: (oo * b + oi, io * a + ii, h, w)


def _is_depthwise(call: relax.Call) -> bool:
    """One filter per channel: as many groups as input and output channels."""
    data_shape, weight_shape = static_shape(call.args[0]), static_shape(call.args[1])
    if data_shape is None or weight_shape is None or len(data_shape) != 5 or len(weight_shape) != 6:
        return False
    channels = data_shape[1] * data_shape[4]
    out_channels = weight_shape[0] * weight_shape[5]
    return int(call.attrs.groups) == channels == out_channels and weight_shape[1] * weight_shape[4] == 1


def depthwise_conv2d_nchwc(data, weight, strides, padding, dilation, out_dtype):
    """A depthwise conv in the blocked layout: ``data`` ``NCHW{c}c``, ``weight`` ``OIHW1i{c}o``
    (``(C/c, 1, kh, kw, 1, c)``), output ``NCHW{c}c``; each channel convolved with its own filter.
    Its compute block is :data:`DEPTHWISE_BLOCK`, which :mod:`.depthwise` schedules. (TOPI
    declares this operator but ships no implementation in the wheel.)"""
    from tvm import te

    batch, chunks, height, width, block = (int(d) for d in data.shape)
    _, _, kernel_h, kernel_w, _, _ = (int(d) for d in weight.shape)
    (stride_h, stride_w), (dil_h, dil_w) = strides, dilation
    top, left, bottom, right = padding
    out_h = (height + top + bottom - (kernel_h - 1) * dil_h - 1) // stride_h + 1
    out_w = (width + left + right - (kernel_w - 1) * dil_w - 1) // stride_w + 1
    padded = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], name="data_pad") \
        if any(padding) else data
    rh = te.reduce_axis((0, kernel_h), name="rh")
    rw = te.reduce_axis((0, kernel_w), name="rw")
    return te.compute(
        (batch, chunks, out_h, out_w, block),
        lambda n, c, y, x, b: te.sum(
            padded[n, c, y * stride_h + rh * dil_h, x * stride_w + rw * dil_w, b].astype(out_dtype)
            * weight[c, 0, rh, rw, 0, b].astype(out_dtype), axis=[rh, rw]),
        name=DEPTHWISE_BLOCK)


def legalize_layout_transform(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """TVM's legalization, except that a boolean tensor pads with ``False``: TVM's fills every
    non-integer tensor with a float zero, which the schedule refuses for a ``bool`` buffer. Bool
    masks in the blocked layout come from gradients (a ReLU's or max pool's), which distillation
    compiles with these kernels."""
    from tvm import te
    from tvm.relax.utils import gen_call_tir_inputs
    from tvm.relax.transform.legalize_ops.manipulate import _layout_transform

    if str(call.args[0].ty.dtype) != "bool" or call.attrs.pad_value is not None:
        return _layout_transform(bb, call)
    index_map = call.attrs.index_map
    _, padding = index_map.non_surjective_inverse(call.args[0].ty.shape)
    name = "te_layout_transform" if isinstance(padding, tvm.tirx.expr.IntImm) else "te_layout_transform_with_pad"
    func, args, _ = gen_call_tir_inputs(lambda data, name: te.compute(data.shape, data, name=name), call.args[0], name)
    sch = tvm.s_tir.Schedule(func)
    sch.transform_layout(name, ("write", 0), index_map, tvm.tirx.const(False, "bool"))
    return relax.call_tir(bb.add_func(sch.mod["main"], name), args,
                          [relax.TensorType(index_map.map_shape(list(args[0].ty.shape)), "bool")])


@relax.expr_functor.mutator
class _SplitAsSlices(relax.PyExprMutator):
    def visit_call_(self, op):
        call = super().visit_call_(op)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.split":
            return call
        shape = static_shape(call.args[0])
        sections = call.attrs.indices_or_sections
        if shape is None or isinstance(sections, (int, tvm.tirx.IntImm)):
            return call  # equal sections of a symbolic or uneven size: left to TVM
        axis = int(call.attrs.axis) % len(shape)
        bounds = [0, *(int(i) for i in sections), shape[axis]]
        return relax.Tuple([relax.op.strided_slice(call.args[0], axes=[axis], begin=[lo], end=[hi])
                             for lo, hi in zip(bounds[:-1], bounds[1:])])


@tvm.transform.module_pass(opt_level=0, name="SplitAsSlices")
def split_as_slices(mod: tvm.IRModule, ctx) -> tvm.IRModule:
    """``split`` at given indices → one ``strided_slice`` per part (the same values).

    ``ConvertLayout`` carries a blocked layout into ``split`` and then fails on it in the
    gradient of a concat (``relax.transform.Gradient`` writes it as a channel split): the module
    no longer builds. It handles slices (each goes back to NCHW), and :func:`keep_slices_blocked`
    keeps those on block boundaries blocked."""
    return rewrite_functions(mod, _SplitAsSlices(mod))


def keep_slices_blocked() -> tvm.transform.Pass:
    """Channel slices on block boundaries, and what follows them, stay in the blocked layout.

    ``ConvertLayout`` does not carry a blocked layout through ``strided_slice``: a slice of a
    blocked tensor's channels goes back to NCHW first, and everything after it (the ReLU, the
    pool, the concat) runs in NCHW until the next conv transforms it back. The sibling merge
    (:class:`~rebirth_tvm.passes.MergeParallelConvs`) puts such slices after every merged conv
    of an inception module: two full-tensor transforms per branch. Here, after
    ``ConvertLayout``, a slice whose bounds are multiples of the block reads the blocked tensor
    directly (channel ``b·c`` is block ``b``), and ReLU, element-wise max/min with a scalar,
    pooling, same-shape add/multiply and channel concat of such values are done blocked too;
    a transform back to the same block then disappears. The NCHW values stay defined for any
    other reader, and are removed where nothing reads them."""

    @tvm.transform.module_pass(opt_level=0, name="KeepSlicesBlocked")
    def transform(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(rewrite_functions(mod, _KeepSlicesBlocked(mod)))

    return transform


def _layout_change(expr, mutator) -> tuple[str, object, int] | None:
    """``("unblock", blocked value, c)`` when ``expr`` (a variable) is bound to a transform
    ``NCHW{c}c`` → ``NCHW``, ``("block", plain value, c)`` for ``NCHW`` → ``NCHW{c}c``; else None."""
    value = mutator.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op) or value.op.name != "relax.layout_transform" \
            or value.attrs.pad_value is not None:
        return None
    source, result = static_shape(value.args[0]), static_shape(value)
    if source is None or result is None:
        return None
    index_map = value.attrs.index_map
    if len(source) == 5 and len(result) == 4 and result[1] == source[1] * source[4]:
        kind, c, expected = "unblock", source[4], _unblock_map(f"NCHW{source[4]}c")
    elif len(source) == 4 and len(result) == 5 and source[1] == result[1] * result[4]:
        kind, c, expected = "block", result[4], _block_map(f"NCHW{result[4]}c")
    else:
        return None
    if not _maps_like(index_map, expected, source):
        return None
    return kind, value.args[0], c


def _maps_like(index_map, expected, shape: list[int]) -> bool:
    """Whether ``index_map`` sends indices of ``shape`` where ``expected`` does (checked at the
    corners and a few inner points: the maps compared are affine in each index)."""
    from itertools import product

    for point in set(product(*[{0, 1, d - 1} for d in shape])):
        got = index_map.map_indices([tvm.tirx.IntImm("int64", i) for i in point])  # folded to constants
        if not all(isinstance(g, tvm.tirx.IntImm) for g in got) or [int(g) for g in got] != list(expected(*point)):
            return False
    return True


def _is_scalar_constant(expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst) and int(np.prod(expr.value.shape)) == 1


def _blocked_channel_constant(expr, shape: list[int] | None, c: int):
    """A constant of shape ``(1, C, 1, 1)`` broadcast over an NCHW ``shape`` with ``C`` channels,
    as ``(1, C / c, 1, 1, c)`` for the ``NCHW{c}c`` layout; None for anything else."""
    if not isinstance(expr, tvm.ir.GenericConst) or shape is None or len(shape) != 4:
        return None
    value = expr.value.numpy()
    channels = shape[1]
    if value.shape != (1, channels, 1, 1) or channels % c:
        return None
    return relax.const(np.ascontiguousarray(value.reshape(1, channels // c, c, 1, 1).transpose(0, 1, 3, 4, 2)))


@relax.expr_functor.mutator
class _KeepSlicesBlocked(relax.PyExprMutator):
    UNARY = ("relax.nn.relu",)
    WITH_SCALAR = ("relax.maximum", "relax.minimum")
    SAME_SHAPE = ("relax.add", "relax.multiply")
    POOLS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d")

    def _blocked(self, expr) -> tuple[object, int] | None:
        found = _layout_change(expr, self)
        return (found[1], found[2]) if found is not None and found[0] == "unblock" else None

    def _unblocked(self, blocked, c: int) -> relax.Expr:
        return relax.op.layout_transform(self.builder_.emit(blocked), index_map=_unblock_map(f"NCHW{c}c"))

    def visit_call_(self, op):
        call = super().visit_call_(op)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        name, args = call.op.name, call.args
        if name == "relax.layout_transform":
            found = _layout_change(call, self)
            if found is not None and found[0] == "block":
                inner = self._blocked(found[1])
                if inner is not None and inner[1] == found[2]:
                    return inner[0]  # blocked → NCHW → the same blocks: the blocked value itself
            return call
        if name == "relax.strided_slice":
            inner = self._blocked(args[0])
            if inner is None:
                return call
            blocked, c = inner
            axes, begin, end = ([int(v.value) for v in a] for a in args[1:4])
            strides = [int(v.value) for v in args[4]] if len(args) > 4 else [1]
            channels = static_shape(args[0])[1]
            if axes != [1] or strides != [1] or begin[0] % c or min(end[0], channels) % c or begin[0] < 0 or end[0] < 0:
                return call
            return self._unblocked(relax.op.strided_slice(blocked, axes=[1], begin=[begin[0] // c],
                                                          end=[min(end[0], channels) // c]), c)
        if name in self.UNARY:
            inner = self._blocked(args[0])
            return self._unblocked(relax.Call(call.op, [inner[0]], call.attrs), inner[1]) if inner else call
        if name in self.WITH_SCALAR:
            inner = self._blocked(args[0])
            if inner is not None and _is_scalar_constant(args[1]) and len(args[1].value.shape) == 0:
                return self._unblocked(relax.Call(call.op, [inner[0], args[1]], call.attrs), inner[1])
            return call
        if name in self.SAME_SHAPE:
            inner = [self._blocked(a) for a in args]
            if all(inner) and inner[0][1] == inner[1][1] and static_shape(args[0]) == static_shape(args[1]) == static_shape(call):
                return self._unblocked(relax.Call(call.op, [i[0] for i in inner], call.attrs), inner[0][1])
            # One side blocked, the other a per-channel constant (a conv's bias, a scale): the
            # constant is re-laid out here, once (the narrow first conv's bias, ReLU and pool).
            for side in (0, 1):
                channelwise = _blocked_channel_constant(args[1 - side], static_shape(call), inner[side][1]) if inner[side] else None
                if channelwise is not None:
                    operands = [inner[side][0], channelwise] if side == 0 else [channelwise, inner[side][0]]
                    return self._unblocked(relax.Call(call.op, operands, call.attrs), inner[side][1])
            return call
        if name in self.POOLS:
            inner = self._blocked(args[0])
            if inner is None or str(call.attrs.layout) != "NCHW" or str(call.attrs.out_layout) != "NCHW":
                return call
            blocked, c = inner
            a = call.attrs
            make = relax.op.nn.max_pool2d if name == "relax.nn.max_pool2d" else relax.op.nn.avg_pool2d
            extra = {} if name == "relax.nn.max_pool2d" else {"count_include_pad": bool(a.count_include_pad)}
            pooled = make(blocked, pool_size=[int(v) for v in a.pool_size], strides=[int(v) for v in a.strides],
                          padding=[int(v) for v in a.padding], dilation=[int(v) for v in a.dilation], ceil_mode=bool(a.ceil_mode),
                          layout=f"NCHW{c}c", out_layout=f"NCHW{c}c", **extra)
            return self._unblocked(pooled, c)
        if name == "relax.concat":
            parts = args[0].fields if isinstance(args[0], relax.Tuple) else None
            if parts is None or int(call.attrs.axis) not in (1, -3) or len(static_shape(call) or ()) != 4:
                return call
            inner = [self._blocked(p) for p in parts]
            if not all(inner) or len({c for _, c in inner}) != 1:
                return call
            return self._unblocked(relax.op.concat([b for b, _ in inner], axis=1), inner[0][1])
        return call
