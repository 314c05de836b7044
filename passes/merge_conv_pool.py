"""MergeConvPool: ``conv2d (+bias) (+ReLU) → max/avg pool`` becomes one strided ``conv2d (+ReLU)``.

Relearned, not exact (DeepRebirth's streamline merge). The new conv's stride is the product of
the conv's and the pool's strides, and its padding is chosen so its output shape equals the
pool's exactly (ceil mode and asymmetric padding included). Kernel policy:

* ``"cover"`` (default): the kernel grows to the pool's receptive field, ``kc + (kp - 1)·sc``.
  Initial weights are the conv averaged over the pool window, which is *exact* for an average
  pool without padding and no ReLU between.
* ``"keep"``: the conv's own kernel, centred on that receptive field; cheaper, always relearned.

Weights come from a retraining hook (``rebirth_tvm.hooks``) that sees the site's input
activations computed by the already rewritten network below it (sites are done bottom-up, one at
a time) and the teacher block's outputs: pre-activation for max pooling (ReLU and max commute),
the block's own output for average pooling. Each site reports its fidelity on held-out
calibration inputs before (initial weights) and after relearning: relative MSE and cosine.

Refuses, with the reason recorded, when: the conv is grouped or dilated; an intermediate value is
read elsewhere; the pool is dilated or not NCHW; the conv weight is not a constant; no padding
reproduces the pool's output shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ._conv import ConvUnit, conv2d_like, match_conv
from ._graph import FunctionGraph, op_name, shape_of
from ._rewrite import apply_plan
from ._sites import REFUSED, REWRITTEN, SiteRecord, publish

_POOLS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d")


@dataclass
class _Site:
    name: str
    pool_var: relax.Var
    pool: relax.Call
    unit: ConvUnit
    relu: bool
    geometry: object  # hooks.ConvGeometry
    init_weight: np.ndarray
    init_bias: np.ndarray


def _pairs(values):
    values = [int(v) for v in values]
    return values if len(values) == 2 else values * 2


@tvm.transform.module_pass(opt_level=0, name="MergeConvPool")
class MergeConvPool:
    """Merge conv (+ReLU) → pool into one strided conv whose weights a retraining hook relearns.

    Parameters
    ----------
    calibration: input batch for ``main``'s first parameter, (N, C, H, W); a fifth of it (at
        least one sample) is held out to measure fidelity.
    hook: ``"lstsq"`` or a callable ``hook(RetrainSite) -> (weight, bias)``.
    kernel: ``"cover"`` or ``"keep"`` (see the module docstring).
    """

    pass_name = "MergeConvPool"

    def __init__(self, calibration: np.ndarray, hook="lstsq", kernel: str = "cover"):
        from rebirth_tvm.hooks import resolve_hook

        if kernel not in ("cover", "keep"):
            raise ValueError(f"kernel policy must be 'cover' or 'keep', not {kernel!r}")
        self.calibration = np.asarray(calibration, dtype=np.float32)
        self.hook = resolve_hook(hook)
        self.kernel = kernel

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        self.sites: list[SiteRecord] = []
        handled: set[str] = set()
        # Calibration inputs feed main's first parameter, so only main is rewritten.
        has_main = any(gv.name_hint == "main" for gv in mod.get_global_vars())
        while has_main:  # bottom-up: each site sees the network already rewritten below it
            graph = FunctionGraph(mod["main"])
            site = None
            for name, found in self._candidates(graph):
                if name in handled:
                    continue
                handled.add(name)
                if isinstance(found, str):
                    self.sites.append(SiteRecord(self.pass_name, name, REFUSED, found, exact=False))
                    continue
                site = found
                break
            if site is None:
                break
            mod = self._relearn(mod, site)
        publish(self.sites)
        return mod

    # -- finding sites -------------------------------------------------------------------------
    def _candidates(self, graph: FunctionGraph):
        for binding in graph.dataflow_bindings():
            if op_name(binding.value) in _POOLS:
                yield binding.var.name, self._match(graph, binding.var, binding.value)

    def _match(self, graph: FunctionGraph, pool_var, pool):
        from rebirth_tvm.hooks import ConvGeometry

        attrs = pool.attrs
        if attrs.layout != "NCHW" or any(int(d) != 1 for d in attrs.dilation):
            return "the pool is dilated or not NCHW"
        source = pool.args[0]
        relu = op_name(graph.producer(source)) == "relax.nn.relu"
        if relu:
            if not graph.single_use(source):
                return f"{source.name} (the ReLU) is also read elsewhere"
            source = graph.producer(source).args[0]
        unit = match_conv(graph, source)
        if isinstance(unit, str):
            return unit
        if not graph.single_use(unit.out_var):
            return f"conv output {unit.out_var.name} is also read elsewhere (merging would duplicate the conv)"
        conv = unit.conv.attrs
        if int(conv.groups) != 1:
            return f"grouped conv (groups={int(conv.groups)})"
        if any(int(d) != 1 for d in conv.dilation):
            return "dilated conv"
        kc, sc = _pairs(unit.weight.shape[2:]), _pairs(conv.strides)
        kp, sp = _pairs(attrs.pool_size), _pairs(attrs.strides)
        pc, pp = [int(p) for p in conv.padding], [int(p) for p in attrs.padding]
        in_shape = shape_of(unit.conv.args[0])
        out_shape = shape_of(pool_var)
        kernel, padding = [], [0, 0, 0, 0]
        for axis in (0, 1):
            field = kc[axis] + (kp[axis] - 1) * sc[axis]
            size = field if self.kernel == "cover" else kc[axis]
            before = pc[axis] + pp[axis] * sc[axis] - (field - size) // 2
            before = max(before, 0)
            stride = sc[axis] * sp[axis]
            length, out = in_shape[2 + axis], out_shape[2 + axis]
            after = max(0, (out - 1) * stride + size - length - before)
            if (length + before + after - size) // stride + 1 != out:
                return f"no padding gives the pool's output size {out} along axis {2 + axis}"
            kernel.append(size)
            padding[axis], padding[axis + 2] = before, after
        geometry = ConvGeometry(int(in_shape[1]), unit.channels, tuple(kernel), (sc[0] * sp[0], sc[1] * sp[1]), tuple(padding))
        init = np.zeros((unit.channels, in_shape[1], *kernel), dtype=np.float64)
        if self.kernel == "cover":
            for a in range(kp[0]):
                for b in range(kp[1]):
                    init[:, :, a * sc[0]: a * sc[0] + kc[0], b * sc[1]: b * sc[1] + kc[1]] += unit.weight
            init /= kp[0] * kp[1]
        else:
            init[:] = unit.weight
        bias = unit.bias if unit.bias is not None else np.zeros(unit.channels)
        return _Site(pool_var.name, pool_var, pool, unit, relu, geometry, init, np.asarray(bias, np.float64))

    # -- relearning ----------------------------------------------------------------------------
    def _relearn(self, mod, site: _Site) -> tvm.IRModule:
        from rebirth_tvm.hooks import RetrainSite, conv2d_numpy

        start = time.perf_counter()
        inputs = _activations(mod, site.unit.conv.args[0], self.calibration)
        teacher = _teacher(site)
        targets = teacher(inputs)
        held = max(1, len(inputs) // 5)
        train_x, train_t, test_x, test_t = inputs[:-held], targets[:-held], inputs[-held:], targets[-held:]
        retrain = RetrainSite(site.name, site.geometry, site.init_weight, site.init_bias, train_x, train_t, teacher)
        weight, bias = self.hook(retrain)
        weight, bias = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
        before = _fidelity(conv2d_numpy(test_x, site.init_weight, site.init_bias, site.geometry), test_t)
        after = _fidelity(conv2d_numpy(test_x, weight, bias, site.geometry), test_t)

        dtype = site.unit.dtype
        g = site.geometry

        def build(em):
            conv = conv2d_like(site.unit.conv.attrs, em.remap(site.unit.conv.args[0]), relax.const(weight.astype(dtype)),
                               strides=list(g.stride), padding=list(g.padding))
            out = relax.op.add(em.emit(conv, site.name + "_conv"), relax.const(bias.astype(dtype).reshape(1, -1, 1, 1)))
            return relax.op.nn.relu(em.emit(out, site.name + "_bias")) if site.relu else out

        mod = apply_plan(mod, {site.pool_var: build})
        self.sites.append(SiteRecord(
            self.pass_name, site.name, REWRITTEN,
            f"{'conv+relu' if site.relu else 'conv'}+{op_name(site.pool).replace('relax.nn.', '')} → one "
            f"{g.kernel[0]}x{g.kernel[1]}/s{g.stride[0]} conv; relative MSE {before['rel_mse']:.3g} → {after['rel_mse']:.3g}",
            exact=False,
            detail={"kernel": list(g.kernel), "stride": list(g.stride), "padding": list(g.padding),
                    "fidelity_initial": before, "fidelity": after, "held_out": held, "calibration": len(inputs),
                    "seconds": round(time.perf_counter() - start, 3)},
        ))
        return mod


def _fidelity(out: np.ndarray, ref: np.ndarray) -> dict:
    out, ref = out.reshape(-1).astype(np.float64), ref.reshape(-1).astype(np.float64)
    rel_mse = float(np.sum((out - ref) ** 2) / max(np.sum(ref ** 2), 1e-30))
    cosine = float(out @ ref / max(np.linalg.norm(out) * np.linalg.norm(ref), 1e-30))
    return {"rel_mse": rel_mse, "cosine": cosine}


def _activations(mod: tvm.IRModule, var, calibration: np.ndarray) -> np.ndarray:
    """The value of ``var`` in ``main`` for each calibration sample (batch 1 at a time)."""
    func = mod["main"]
    if any(var.same_as(p) for p in func.params):
        return calibration.astype(np.float32)
    bb = relax.BlockBuilder()
    with bb.function("main", list(func.params)):
        with bb.dataflow():
            for block in func.body.blocks:
                for binding in block.bindings:
                    bb.emit_normalized(binding)
                    if binding.var.same_as(var):
                        break
                else:
                    continue
                break
            out = bb.emit_output(var)
        bb.emit_func_output(out)
    probe = relax.transform.DeadCodeElimination()(bb.get())
    vm = relax.VirtualMachine(tvm.compile(probe, target=tvm.target.Target("llvm")), tvm.cpu())
    batch = int(func.params[0].ty.shape[0])
    outs = [vm["main"](tvm.runtime.tensor(calibration[i:i + batch])).numpy() for i in range(0, len(calibration), batch)]
    return np.concatenate(outs).astype(np.float32)


def _teacher(site: _Site):
    """The original block as a function of its input: pre-activation for max pooling."""
    unit, pool = site.unit, site.pool
    keep_relu = site.relu and op_name(pool) == "relax.nn.avg_pool2d"
    compiled = {}

    def run(x: np.ndarray) -> np.ndarray:
        if x.shape not in compiled:
            bb = relax.BlockBuilder()
            data = relax.Var("x", relax.TensorType(x.shape, "float32"))
            a, p = unit.conv.attrs, pool.attrs
            with bb.function("main", [data]):
                with bb.dataflow():
                    y = bb.emit(conv2d_like(a, data, relax.const(unit.weight.astype("float32"))))
                    if unit.bias is not None:
                        y = bb.emit(relax.op.add(y, relax.const(unit.bias.astype("float32").reshape(1, -1, 1, 1))))
                    if keep_relu:
                        y = bb.emit(relax.op.nn.relu(y))
                    fn = relax.op.nn.max_pool2d if op_name(pool) == "relax.nn.max_pool2d" else relax.op.nn.avg_pool2d
                    kwargs = dict(pool_size=p.pool_size, strides=p.strides, padding=p.padding, ceil_mode=bool(p.ceil_mode))
                    if fn is relax.op.nn.avg_pool2d:
                        kwargs["count_include_pad"] = bool(p.count_include_pad)
                    out = bb.emit_output(fn(y, **kwargs))
                bb.emit_func_output(out)
            compiled[x.shape] = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target("llvm")), tvm.cpu())
        return compiled[x.shape]["main"](tvm.runtime.tensor(x.astype("float32"))).numpy()

    return run
