"""DistributePoolOverConcat: ``pool(concat(a, b, ...))`` becomes ``concat(pool(a), pool(b), ...)``.

Exact: max and average pooling work channel by channel, and a concat along the channel axis only
stacks channels, so pooling each input and concatenating gives the same tensor. It is the step
that gives an inception module followed by a pool (GoogLeNet's pool3 and pool4) *strided
branches*: afterwards each branch ends in ``conv → ReLU → pool``, which :class:`MergeConvPool`
turns into one strided conv, so the branch convs run at a quarter of the resolution.

Refuses, with the reason recorded, when the concat is not along channels (axis 1 of NCHW), the
pool is not NCHW, or the concat's result is read by anyone else (the concat would stay, and the
pooling would be done twice).
"""

from __future__ import annotations

import fnmatch

import tvm
from tvm import relax

from rebirth_tvm.core.graph import FunctionGraph, op_name

from ._rewrite import SitePass
from ._sites import REFUSED, REWRITTEN, SiteRecord

_POOLS = {"relax.nn.max_pool2d": relax.op.nn.max_pool2d, "relax.nn.avg_pool2d": relax.op.nn.avg_pool2d}


def pool_like(pool: relax.Call, data):
    """A pool call with ``pool``'s attributes on new data."""
    a = pool.attrs
    kwargs = dict(pool_size=[int(v) for v in a.pool_size], strides=[int(v) for v in a.strides],
                  padding=[int(v) for v in a.padding], dilation=[int(v) for v in a.dilation],
                  ceil_mode=bool(a.ceil_mode), layout=a.layout, out_layout=a.out_layout)
    if op_name(pool) == "relax.nn.avg_pool2d":
        kwargs["count_include_pad"] = bool(a.count_include_pad)
    return _POOLS[op_name(pool)](data, **kwargs)


@tvm.transform.module_pass(opt_level=0, name="DistributePoolOverConcat")
class DistributePoolOverConcat(SitePass):
    """Pool each input of a channel concat instead of the concat. Exact.

    Parameters
    ----------
    sites: ``"all"`` or pool names / glob patterns to distribute (the rebirth pipeline passes its
        own selection, so pools whose branches will not be merged stay one pool).
    """

    pass_name = "DistributePoolOverConcat"

    def __init__(self, sites="all"):
        self.selection = None if sites == "all" else ([sites] if isinstance(sites, str) else list(sites))

    def plan_function(self, graph: FunctionGraph, records: list[SiteRecord]):
        plan = {}
        for binding in graph.dataflow_bindings():
            pool = binding.value
            if op_name(pool) not in _POOLS:
                continue
            concat = graph.producer(pool.args[0])
            if op_name(concat) != "relax.concat":
                continue
            site = binding.var.name
            if self.selection is not None and not any(fnmatch.fnmatchcase(site, p) for p in self.selection):
                continue
            ndim = len(concat.ty.shape) if getattr(concat.ty, "shape", None) is not None else 4
            if concat.attrs.axis is None or int(concat.attrs.axis) % ndim != 1:
                records.append(SiteRecord(self.pass_name, site, REFUSED, "the concat is not along the channel axis"))
                continue
            if pool.attrs.layout != "NCHW":
                records.append(SiteRecord(self.pass_name, site, REFUSED, f"pool layout {pool.attrs.layout} is not NCHW"))
                continue
            if not graph.single_use(pool.args[0]):
                records.append(SiteRecord(self.pass_name, site, REFUSED, f"the concat {graph.name(pool.args[0])} is also read elsewhere"))
                continue
            fields = list(concat.args[0].fields) if isinstance(concat.args[0], relax.Tuple) else None
            if fields is None:
                records.append(SiteRecord(self.pass_name, site, REFUSED, "the concat's inputs are not a literal tuple"))
                continue

            def build(em, p=pool, fs=fields, name=site):
                parts = [em.emit(pool_like(p, em.remap(f)), f"{name}_part{i}") for i, f in enumerate(fs)]
                return relax.op.concat(parts, axis=1)

            plan[binding.var] = build
            records.append(SiteRecord(self.pass_name, site, REWRITTEN, f"pooled each of the {len(fields)} concat inputs"))
        return plan
