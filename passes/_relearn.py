"""The shared driver of every relearned (lossy) merge.

A lossy pass only says *where* it can merge and *what* the new conv looks like (a
:class:`RelearnSite`); this driver does the rest, identically for every rule:

1. sites are taken bottom-up, one at a time, so each one sees the network already rewritten below
   it (layer-wise rebirth: errors cannot compound unseen);
2. the site's input activations are computed on the calibration inputs by the current module;
3. the teacher (the original block) gives the targets; a fifth of the samples is held out;
4. the retraining hook returns the new weights; fidelity on the held-out samples is measured for
   the initial and the relearned weights (relative MSE and cosine);
5. the block is replaced by ``conv (+ bias) (+ ReLU)`` and the site is recorded.
"""

from __future__ import annotations

import fnmatch
import heapq
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax

from ._conv import ConvUnit, conv2d_like
from ._graph import FunctionGraph
from ._rewrite import apply_plan
from ._sites import REFUSED, REWRITTEN, SiteRecord, publish


@dataclass
class RelearnSite:
    """One block a lossy rule wants to replace by a single conv (+ ReLU).

    ``teacher(x)`` maps the site's input activations to the targets the new conv must produce
    *before* its ReLU (pre-activation where the block allows it, the block's output otherwise).
    """

    name: str
    pattern: str
    output_var: relax.Var
    input_var: relax.Var
    unit: ConvUnit  # the conv whose attributes (layout, dtype) the new conv keeps
    geometry: object  # rebirth_tvm.hooks.ConvGeometry
    init_weight: np.ndarray
    init_bias: np.ndarray
    relu: bool
    teacher: Callable[[np.ndarray], np.ndarray]
    macs_before: int


def fidelity(out: np.ndarray, ref: np.ndarray) -> dict:
    """Relative MSE (‖out − ref‖² / ‖ref‖²) and cosine similarity, over all elements.

    Relearned sites measure it on held-out calibration inputs, after the site's ReLU if it has one.
    """
    out, ref = out.reshape(-1).astype(np.float64), ref.reshape(-1).astype(np.float64)
    rel_mse = float(np.sum((out - ref) ** 2) / max(np.sum(ref ** 2), 1e-30))
    cosine = float(out @ ref / max(np.linalg.norm(out) * np.linalg.norm(ref), 1e-30))
    return {"rel_mse": rel_mse, "cosine": cosine}


def passed_on_fidelity(out: np.ndarray, ref: np.ndarray, relu: bool) -> dict:
    """:func:`fidelity` of what the network passes on: after the ReLU where one follows (the
    negative part of a pre-activation never reaches the next layer)."""
    if relu:
        out, ref = np.maximum(out, 0), np.maximum(ref, 0)
    return fidelity(out, ref)


def channel_mean_fidelity(train_targets: np.ndarray, test_targets: np.ndarray, relu: bool) -> dict:
    """The trivial baseline a relearned site must beat: predict every output channel's mean
    (over the training targets, after the ReLU where one follows) whatever the input.

    A relearned conv that does no better than this constant has learned nothing about its input,
    whatever its error against the initial weights says."""
    passed = np.maximum(train_targets, 0) if relu else train_targets
    mean = passed.mean(axis=(0, 2, 3), keepdims=True) if passed.ndim == 4 else passed.mean(axis=0, keepdims=True)
    return passed_on_fidelity(np.broadcast_to(mean, test_targets.shape), test_targets, relu)


def activations(mod: tvm.IRModule, var, calibration: np.ndarray) -> np.ndarray:
    """The value of ``var`` in ``main`` for each calibration sample, in the model's batch size."""
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
    batch = int(func.params[0].ty.shape[0])
    if len(calibration) % batch:
        raise ValueError(f"{len(calibration)} calibration samples do not split into batches of {batch}")
    run = _onnxruntime_runner(probe) or _tvm_runner(probe)
    outs = [run(calibration[i:i + batch]) for i in range(0, len(calibration), batch)]
    return np.concatenate(outs).astype(np.float32)


def _onnxruntime_runner(probe: tvm.IRModule):
    """Run the probe with onnxruntime (~45x faster than an untuned TVM build), if it exports."""
    from rebirth_tvm.errors import RebirthError
    from rebirth_tvm.export_onnx import to_onnx

    try:
        model = to_onnx(probe)
    except RebirthError:
        return None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _tvm_runner(probe: tvm.IRModule):
    vm = relax.VirtualMachine(tvm.compile(probe, target=tvm.target.Target("llvm")), tvm.cpu())
    return lambda x: vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def compiled_teacher(emit_block: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """A teacher that runs a small Relax block, compiled once per input shape.

    ``emit_block(bb, data)`` emits the block's ops on ``data`` and returns the output expression.
    Running the block with TVM's own ops keeps the teacher's semantics (ceil-mode pooling,
    padding) identical to the model's.
    """
    compiled = {}

    def run(x: np.ndarray) -> np.ndarray:
        if x.shape not in compiled:
            bb = relax.BlockBuilder()
            data = relax.Var("x", relax.TensorType(x.shape, "float32"))
            with bb.function("main", [data]):
                with bb.dataflow():
                    out = bb.emit_output(emit_block(bb, data))
                bb.emit_func_output(out)
            compiled[x.shape] = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target("llvm")), tvm.cpu())
        return compiled[x.shape]["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run


def emit_conv_unit(bb, unit: ConvUnit, data):
    """``unit``'s conv (+ bias) on ``data``, in float32, for teachers."""
    y = bb.emit(conv2d_like(unit.conv.attrs, data, relax.const(unit.weight.astype("float32"))))
    if unit.bias is not None:
        y = bb.emit(relax.op.add(y, relax.const(unit.bias.astype("float32").reshape(1, -1, 1, 1))))
    return y


def conv_macs(out_shape, weight_shape) -> int:
    return int(np.prod(out_shape)) * int(np.prod(weight_shape[1:]))


class RelearnPass:
    """Base of the lossy passes. Subclasses define ``find_sites(graph)`` and ``pass_name``.

    Parameters
    ----------
    calibration: inputs for ``main``'s first parameter, (N, C, H, W) with N a multiple of the
        model's batch; a fifth of it (at least one sample) is held out to measure fidelity.
    hook: ``"lstsq"`` or a callable ``hook(RetrainSite) -> (weight, bias)``.
    sites: ``"all"`` or site names / glob patterns (``"inception_4*"``) to rewrite; other sites
        are left alone and reported as not selected.
    selector: decides per site, before relearning, whether the rewrite is worth making
        (:class:`~rebirth_tvm.passes.LatencySelector`); None rewrites every site.
    targets: ``"original"`` (default): the teacher block applied to the original network's
        activations, so a site also undoes the error of the rewrites below it; ``"block"``: the
        teacher block applied to the reborn network's activations (pure block imitation).
    max_site_error: a relearned site whose held-out relative MSE stays above this is put back
        as it was and reported as refused, with its numbers (None: no limit). Errors compound
        through the layers above, so one bad merge can cost more accuracy than many good ones.
    """

    pass_name = "RelearnPass"

    def __init__(self, calibration: np.ndarray, hook="lstsq", sites="all", selector=None, max_site_error: float | None = None,
                 targets: str = "original"):
        from rebirth_tvm.hooks import resolve_hook

        self.calibration = np.asarray(calibration, dtype=np.float32)
        if self.calibration.ndim != 4 or len(self.calibration) < 2:
            raise ValueError(f"calibration must be (N, C, H, W) with N >= 2, got shape {self.calibration.shape}")
        self.hook = resolve_hook(hook)
        self.selection = None if sites == "all" else ([sites] if isinstance(sites, str) else list(sites))
        #: decides per site whether the rewrite is worth it (e.g. :class:`LatencySelector`); None keeps all.
        self.selector = selector
        self.max_site_error = max_site_error
        if targets not in ("original", "block"):
            raise ValueError(f"targets must be 'original' or 'block', not {targets!r}")
        self.targets = targets

    def selected(self, name: str) -> bool:
        return self.selection is None or any(fnmatch.fnmatchcase(name, p) for p in self.selection)

    def find_sites(self, graph: FunctionGraph) -> Iterator[tuple[str, RelearnSite | str]]:
        return iter(())

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        self.sites: list[SiteRecord] = []
        self._reference = mod  # the network as it came: where the targets come from
        self._relearned: set[str] = set()  # sites rewritten so far (their new convs are named after them)
        self._reset_caches()  # a pass object may be run on several modules
        rewritten: list[SiteRecord] = []
        refused: dict[str, str] = {}
        # Calibration inputs feed main's first parameter, so only main is rewritten.
        has_main = any(gv.name_hint == "main" for gv in mod.get_global_vars())
        # tqdm's disable=None shows the bar on a terminal only, so logs and pipes stay clean.
        progress = tqdm(desc=f"{self.pass_name}: relearning", unit=" site", disable=None, leave=False)
        declined: dict[str, dict] = {}  # sites the selector measured, or the error limit, turned down
        guarded: dict[str, SiteRecord] = {}  # relearned, but put back: too far from the teacher
        decisions: dict[str, dict] = {}
        while has_main:
            # Bottom-up: take the lowest site that can be rewritten now, relearn it on the
            # network as rewritten so far, then look again. A refusal is only final if it still
            # holds after the last rewrite (a merge below can turn a refused site into a chain).
            refused, site = {}, None
            for name, found in self.find_sites(FunctionGraph(mod["main"])):
                if isinstance(found, str):
                    refused[name] = found
                elif not self.selected(name):
                    refused[name] = "not selected (sites=...)"
                elif name in declined:
                    refused[name] = declined[name]["reason"]
                else:
                    if self.selector is not None and name not in decisions:
                        progress.set_postfix_str(f"measuring {name}")
                        decisions[name] = self.selector.decide(mod, found, self.replacement(found))
                        if not decisions[name]["kept"]:
                            declined[name] = decisions[name]
                            refused[name] = decisions[name]["reason"]
                            continue
                    site = found
                    break
            if site is None:
                break
            progress.set_postfix_str(site.name)
            mod = self.relearn(mod, site)
            record = self.sites.pop()
            if site.name in decisions:
                record.detail["latency"] = decisions[site.name]
            if record.status == REFUSED:  # over max_site_error: the module came back unchanged
                guarded[site.name] = record
                declined[site.name] = {"reason": record.reason}
                continue
            rewritten.append(record)
            self._relearned.add(site.name)
            progress.update()
        progress.close()
        self.sites = rewritten + [guarded.get(n) or SiteRecord(self.pass_name, n, REFUSED, r, exact=False,
                                                              detail={"latency": declined[n]} if n in declined else {})
                                  for n, r in refused.items()]
        publish(self.sites)
        self._reset_caches()  # activations of every site: not worth keeping past the run
        self._reference = None
        return mod

    def _reset_caches(self) -> None:
        self._reference_cache: dict = {}

    def relearn(self, mod: tvm.IRModule, site: RelearnSite) -> tvm.IRModule:
        from rebirth_tvm.hooks import RetrainSite, call_hook, conv2d_numpy

        start = time.perf_counter()
        inputs = activations(mod, site.input_var, self.calibration)
        targets = self.targets_for(site, inputs)
        held = max(1, len(inputs) // 5)
        train_x, train_t, test_x, test_t = inputs[:-held], targets[:-held], inputs[-held:], targets[-held:]
        retrain = RetrainSite(site.name, site.geometry, site.init_weight, site.init_bias, train_x, train_t, site.teacher,
                              "relu" if site.relu else None)
        weight, bias = call_hook(self.hook, retrain)  # shapes and finiteness checked there
        fit = getattr(self.hook, "last_fit", None)  # hooks that can say how well-posed the fit was
        expected = (site.geometry.out_channels, site.geometry.in_channels, *site.geometry.kernel)
        before = passed_on_fidelity(conv2d_numpy(test_x, site.init_weight, site.init_bias, site.geometry), test_t, site.relu)
        after = passed_on_fidelity(conv2d_numpy(test_x, weight, bias, site.geometry), test_t, site.relu)
        g = site.geometry
        # Never worse than where it started: least squares fits the targets before the ReLU, and
        # where those are already rectified (an LRN's output) its fit can lose to the initial
        # weights after the ReLU. Then the initial weights stay, and the report says so. A
        # user's own hook is the user's decision: its weights are used as given.
        from rebirth_tvm.hooks import LeastSquaresHook, SGDHook

        kept_initial = after["rel_mse"] > before["rel_mse"] and isinstance(self.hook, (LeastSquaresHook, SGDHook))
        if kept_initial:
            weight, bias, after = site.init_weight, site.init_bias, before
        if self.too_far(site.name, after, {"pattern": site.pattern, "fidelity_initial": before, "fidelity": after,
                                           "seconds": round(time.perf_counter() - start, 3)}):
            return mod
        build = self.replacement(site, weight, bias)
        mod = apply_plan(mod, {site.output_var: build})
        in_shape = [int(d) for d in site.input_var.ty.shape]
        out_shape = (in_shape[0], g.out_channels, *g.output_size(*in_shape[2:]))
        self.sites.append(SiteRecord(
            self.pass_name, site.name, REWRITTEN,
            f"{site.pattern} → one {g.kernel[0]}x{g.kernel[1]}/s{g.stride[0]} conv{'+relu' if site.relu else ''}; "
            f"held-out relative MSE {before['rel_mse']:.3g} → {after['rel_mse']:.3g}"
            + (" (the hook's fit was worse: initial weights kept)" if kept_initial else ""),
            exact=False,
            detail={"pattern": site.pattern, "kernel": list(g.kernel), "stride": list(g.stride), "padding": list(g.padding),
                    "input_shape": in_shape, "output_shape": [int(d) for d in out_shape],
                    "macs_before": site.macs_before, "macs_after": conv_macs(out_shape, expected),
                    "fidelity_initial": before, "fidelity": after,
                    "fidelity_channel_mean": channel_mean_fidelity(train_t, test_t, site.relu),
                    "held_out": held, "calibration": len(inputs),
                    "kept_initial": kept_initial,
                    "seconds": round(time.perf_counter() - start, 3), **({"fit": fit} if fit else {})},
        ))
        return mod


    def targets_for(self, site: RelearnSite, inputs: np.ndarray) -> np.ndarray:
        """What the new conv must produce for ``inputs`` (the reborn network's activations).

        With ``targets="original"``: what the ORIGINAL network computed there, so the new conv
        maps what the reborn network really feeds it to the original values, and each site also
        corrects the drift of the sites below it instead of passing it on (otherwise errors
        compound layer by layer). For a site whose block starts with an original conv, that is
        the teacher block run on the original network's input activations (pre-activation
        targets). A chain site's block starts with a conv relearned by this pass (conv1 → pool1 →
        LRN: the LRN merge sees the new conv), which was never in the original network; its
        targets are the original network's value at the site's output. ``targets="block"`` (or
        a value the original network does not have): the block run on ``inputs``.
        """
        if site.unit.conv_var.name.endswith("_conv") and site.unit.conv_var.name[:-len("_conv")] in self._relearned:
            original_out = self.reference_activations(site.output_var)
            if original_out is not None:
                return original_out
        else:
            original_in = self.reference_activations(site.input_var)
            if original_in is not None:
                return site.teacher(original_in)
        return site.teacher(inputs)

    def reference_activations(self, var) -> np.ndarray | None:
        """``var``'s values in the network as the pass received it, or None if it has no such var."""
        reference = getattr(self, "_reference", None)
        if self.targets != "original" or reference is None:
            return None
        func = reference["main"]
        # Rewrites re-emit bindings, so the same value may be a new Var object here: look it up
        # by name (bindings are named after ONNX nodes) and shape, and only if unambiguous.
        shape = [int(d) for d in var.ty.shape]
        found = [p for p in func.params if p.name == var.name] + [
            b.var for block in func.body.blocks for b in block.bindings if b.var.name == var.name]
        if len(found) != 1 or [int(d) for d in found[0].ty.shape] != shape:
            return None
        cache = self._reference_cache
        if var.name not in cache:
            cache[var.name] = activations(reference, found[0], self.calibration)
        return cache[var.name]

    def too_far(self, name: str, after: dict, detail: dict) -> bool:
        """Record a refusal and say so if the relearned site misses ``max_site_error``."""
        if self.max_site_error is None or after["rel_mse"] <= self.max_site_error:
            return False
        self.sites.append(SiteRecord(self.pass_name, name, REFUSED,
                                     f"relearned, but held-out relative MSE {after['rel_mse']:.3g} stays above the limit "
                                     f"{self.max_site_error:g}: left as it was", exact=False, detail=detail))
        return True

    def replacement(self, site: RelearnSite, weight: np.ndarray | None = None, bias: np.ndarray | None = None):
        """``build(emitter)`` for the site's new block: conv (+ bias) (+ ReLU) on the site's input.

        Without weights, the site's initial ones (what latency selection measures: speed does not
        depend on the values).
        """
        weight = site.init_weight if weight is None else weight
        bias = site.init_bias if bias is None else bias
        g, dtype = site.geometry, site.unit.dtype

        def build(em):
            conv = conv2d_like(site.unit.conv.attrs, em.remap(site.input_var), relax.const(np.asarray(weight).astype(dtype)),
                               strides=list(g.stride), padding=list(g.padding))
            out = relax.op.add(em.emit(conv, site.name + "_conv"), relax.const(np.asarray(bias).astype(dtype).reshape(1, -1, 1, 1)))
            return relax.op.nn.relu(em.emit(out, site.name + "_bias")) if site.relu else out

        return build


class CombinedRelearn(RelearnPass):
    """Several lossy rules in one bottom-up pass: always the lowest site of any rule first.

    Subclasses set ``self.rules`` (RelearnPass instances used only for ``find_sites``).
    """

    rules: list = []

    def find_sites(self, graph: FunctionGraph):
        def positioned(rule):
            for name, found in rule.find_sites(graph):
                var = found.output_var if not isinstance(found, str) else next(b.var for b in graph.bindings if b.var.name == name)
                yield graph.position[var], name, found

        for _, name, found in heapq.merge(*(positioned(rule) for rule in self.rules), key=lambda t: t[0]):
            yield name, found
