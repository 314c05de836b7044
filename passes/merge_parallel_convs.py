"""MergeParallelConvs: convs that read the same tensor become one conv whose output is sliced.

Exact: the merged conv's weight is the siblings' weights concatenated along the output channels
(and their biases likewise); each sibling's result is a ``strided_slice`` of the merged output.
GoogLeNet's three 1×1 convs that open each inception module are the textbook case.

Siblings with different kernel sizes are merged only with ``allow_kernel_padding=True``: the
smaller kernels are zero-padded to the largest, and the padding of the merged conv is chosen so
each sibling's window lands where it was. That costs FLOPs (a 1×1 padded to 3×3 costs 9×), so it
is off by default and every site reports its MACs before and after.

Refuses (per conv, with the reason recorded) when a conv reading a shared input:

* has a stride, dilation, groups, layout or dtype different from its siblings;
* is a grouped conv (its output channels are interleaved per group: not a concatenation);
* has a different kernel size (unless ``allow_kernel_padding``) or padding that no merged
  padding can reproduce;
* has a non-constant or shared weight.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.conv_math import conv_macs
from rebirth_tvm.core.graph import FunctionGraph, dtype_of, op_name, shape_of

from ._conv import CONV2D, conv2d_like, conv_refusal, match_conv_at
from ._rewrite import SitePass
from ._sites import REFUSED, REWRITTEN, SiteRecord


class _Member:
    def __init__(self, graph: FunctionGraph, var, conv):
        self.conv_var, self.conv = var, conv
        self.weight = graph.constant(conv.args[1])
        # Take the bias add along when the conv feeds only it: the slice then replaces the add.
        unit = match_conv_at(graph, var)
        with_bias = not isinstance(unit, str) and unit.bias is not None
        self.bias = unit.bias if with_bias else None
        self.out_var = unit.out_var if with_bias else var
        a = conv.attrs
        self.key = (
            tuple(int(s) for s in a.strides), tuple(int(d) for d in a.dilation), int(a.groups),
            a.data_layout, a.kernel_layout, str(a.out_layout), dtype_of(conv),
        )
        self.kernel = tuple(int(k) for k in self.weight.shape[2:])
        self.padding = tuple(int(p) for p in a.padding)  # top, left, bottom, right

    @property
    def macs(self) -> int:
        return conv_macs(shape_of(self.conv), self.weight.shape)


def merged_padding(members: list[_Member], kernel: tuple[int, int]):
    """Per-member kernel offsets and one padding for the merged conv, or None if none exists.

    Along one spatial axis a sibling with kernel k and padding (before, after), embedded at offset
    o in a kernel of size K, sees the same windows iff the merged padding is (before + o,
    after + K - k - o). We need one (P, Q) that every sibling reaches with 0 <= o <= K - k.
    """
    offsets = [[0, 0] for _ in members]
    padding = [0, 0, 0, 0]
    for axis in (0, 1):
        big = kernel[axis]
        found = None
        candidates = sorted({m.padding[axis] + o for m in members for o in range(big - m.kernel[axis] + 1)})
        for before in candidates:
            offs = [before - m.padding[axis] for m in members]
            if any(o < 0 or o > big - m.kernel[axis] for o, m in zip(offs, members)):
                continue
            afters = {m.padding[axis + 2] + big - m.kernel[axis] - o for o, m in zip(offs, members)}
            if len(afters) == 1:
                found = (before, afters.pop(), offs)
                break
        if found is None:
            return None
        padding[axis], padding[axis + 2], offs = found
        for m_offsets, o in zip(offsets, offs):
            m_offsets[axis] = o
    return offsets, padding


@tvm.transform.module_pass(opt_level=0, name="MergeParallelConvs")
class MergeParallelConvs(SitePass):
    """Merge sibling conv2d's that read the same tensor into one wider conv2d. Exact.

    Parameters
    ----------
    allow_kernel_padding: also merge different kernel sizes by zero-padding the smaller kernels
        (exact, but more FLOPs; the report shows how many).
    """

    pass_name = "MergeParallelConvs"

    def __init__(self, allow_kernel_padding: bool = False):
        self.allow_kernel_padding = allow_kernel_padding

    def plan_function(self, graph: FunctionGraph, records: list[SiteRecord]):
        readers = defaultdict(list)
        for binding in graph.dataflow_bindings():
            if op_name(binding.value) == CONV2D and isinstance(binding.value.args[0], relax.Var):
                readers[binding.value.args[0]].append(binding)
        plan = {}
        for source, bindings in readers.items():
            if len(bindings) < 2:
                continue
            members = []
            for b in bindings:
                reason = conv_refusal(graph, b.value, b.var)
                if reason:
                    records.append(SiteRecord(self.pass_name, b.var.name, REFUSED, reason))
                else:
                    members.append(_Member(graph, b.var, b.value))
            for group in self._groups(members, records, source):
                self._plan_group(graph, group, plan, records, source)
        return plan

    def _groups(self, members: list[_Member], records, source):
        """Split siblings into mergeable groups; record why the odd ones out were left alone."""
        by_key = defaultdict(list)
        for m in members:
            if m.key[2] != 1:
                records.append(SiteRecord(self.pass_name, m.out_var.name, REFUSED, f"grouped conv (groups={m.key[2]}): its output channels are interleaved per group, so merging is not a concatenation"))
                continue
            subkey = m.key if self.allow_kernel_padding else (*m.key, m.kernel, m.padding)
            by_key[subkey].append(m)
        classes = sorted(by_key.values(), key=len, reverse=True)
        if not classes:
            return []
        for group in classes:
            if len(group) >= 2:
                continue
            m = group[0]
            # Say how it differs from the biggest group it is not in (the one it would join).
            ref = next(g for g in classes if g is not group)[0] if len(classes) > 1 else None
            reason = self._difference(m, ref) if ref is not None else "no mergeable sibling"
            records.append(SiteRecord(self.pass_name, m.out_var.name, REFUSED, f"{reason} from {ref.out_var.name if ref else 'its siblings'}, which also reads {source.name}"))
        return [g for g in classes if len(g) >= 2]

    @staticmethod
    def _difference(m: _Member, ref: _Member) -> str:
        names = ["stride", "dilation", "groups", "data layout", "kernel layout", "out layout", "dtype"]
        for name, a, b in zip(names, m.key, ref.key):
            if a != b:
                return f"{name} {a} differs"
        if m.kernel != ref.kernel:
            return f"kernel {m.kernel[0]}x{m.kernel[1]} differs (allow_kernel_padding merges it at extra FLOPs)"
        if m.padding != ref.padding:
            return f"padding {list(m.padding)} differs"
        return "no mergeable sibling"

    def _plan_group(self, graph, group: list[_Member], plan, records, source):
        kernel = (max(m.kernel[0] for m in group), max(m.kernel[1] for m in group))
        layout = merged_padding(group, kernel)
        names = ", ".join(m.out_var.name for m in group)
        if layout is None:
            for m in group:
                records.append(SiteRecord(self.pass_name, m.out_var.name, REFUSED, f"no single padding reproduces the windows of {names}"))
            return
        offsets, padding = layout
        spatial = shape_of(group[0].conv)[2:]
        if any(shape_of(m.conv)[2:] != spatial for m in group):
            for m in group:
                records.append(SiteRecord(self.pass_name, m.out_var.name, REFUSED, f"output sizes of {names} differ"))
            return
        dtype = dtype_of(group[0].conv)
        weights = []
        for m, (oh, ow) in zip(group, offsets):
            w = np.zeros((m.weight.shape[0], m.weight.shape[1], *kernel), dtype=m.weight.dtype)
            w[:, :, oh:oh + m.kernel[0], ow:ow + m.kernel[1]] = m.weight
            weights.append(w)
        weight = np.concatenate(weights, axis=0)
        has_bias = any(m.bias is not None for m in group)
        bias = np.concatenate([m.bias if m.bias is not None else np.zeros(m.weight.shape[0]) for m in group]).astype(dtype) if has_bias else None
        bounds = np.cumsum([0] + [m.weight.shape[0] for m in group])
        ref = group[0].conv
        site = "+".join(m.out_var.name for m in group)
        state = {}

        def merged(em):
            if "out" not in state:  # emitted once, at the first sibling in binding order
                conv = conv2d_like(ref.attrs, em.remap(source), relax.const(weight), padding=padding)
                out = em.emit(conv, "merged_conv")
                if bias is not None:
                    out = em.emit(relax.op.add(out, relax.const(bias.reshape(1, -1, 1, 1))), "merged_conv_bias")
                state["out"] = out
            return state["out"]

        for i, m in enumerate(group):
            begin, end = int(bounds[i]), int(bounds[i + 1])
            plan[m.out_var] = lambda em, b=begin, e=end: relax.op.strided_slice(merged(em), axes=[1], begin=[b], end=[e])
        macs_before = sum(m.macs for m in group)
        macs_after = conv_macs((shape_of(ref)[0], weight.shape[0], *shape_of(ref)[2:]), weight.shape)
        records.append(SiteRecord(
            self.pass_name, site, REWRITTEN,
            f"merged {len(group)} convs reading {source.name} into one {kernel[0]}x{kernel[1]} conv with {weight.shape[0]} channels",
            detail={"convs": [m.out_var.name for m in group], "macs_before": macs_before, "macs_after": macs_after,
                    "params_before": int(sum(m.weight.size for m in group)), "params_after": int(weight.size)},
        ))
