"""The bottom-up loop every relearned (lossy) pass shares.

A lossy pass only says *where* it can merge and *what* the new conv looks like (a
:class:`RelearnSite`); this loop does the rest, identically for every rule:

1. sites are taken bottom-up, one at a time, so each one sees the network already rewritten below
   it (layer-wise rebirth: errors cannot compound unseen);
2. the site's input activations are computed on the calibration inputs by the current module;
3. the targets are what the original network computed there (:meth:`RelearnPass.targets_for`);
4. the weights are fitted by the one relearning driver (:func:`rebirth_tvm.relearn.driver.fit`:
   held-out split, fidelity, "never worse", the error limit);
5. the block is replaced by ``conv (+ bias) (+ ReLU)`` and the site's record is returned, with
   the bindings the rewrite put in (``new_bindings``: how chains and fine-tuning find them).
"""

from __future__ import annotations

import fnmatch
import heapq
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax

from rebirth_tvm.core.conv_math import conv_macs
from rebirth_tvm.core.errors import OptionError
from rebirth_tvm.core.graph import FunctionGraph, block_module, host_function
from rebirth_tvm.relearn import driver
from rebirth_tvm.relearn.activations import activations
from rebirth_tvm.relearn.hooks import resolve_hook

from ._conv import ConvUnit, conv2d_like
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
    geometry: object  # rebirth_tvm.relearn.hooks.ConvGeometry
    init_weight: np.ndarray
    init_bias: np.ndarray
    relu: bool
    teacher: Callable[[np.ndarray], np.ndarray]
    macs_before: int


def compiled_teacher(emit_block: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """A teacher that runs a small Relax block, compiled once per input shape.

    ``emit_block(bb, data)`` emits the block's ops on ``data`` and returns the output expression.
    Running the block with TVM's own ops keeps the teacher's semantics (ceil-mode pooling,
    padding) identical to the model's.
    """
    compiled = {}

    def run(x: np.ndarray) -> np.ndarray:
        if x.shape not in compiled:
            compiled[x.shape] = host_function(block_module(relax.TensorType(x.shape, "float32"), emit_block))
        return compiled[x.shape](x)

    return run


class _RecordingEmitter:
    """An emitter that remembers the names of the bindings it emitted."""

    def __init__(self, emitter, names: list[str]):
        self.emitter, self.names = emitter, names

    def remap(self, expr):
        return self.emitter.remap(expr)

    def emit(self, expr, name: str = ""):
        self.names.append(name)
        return self.emitter.emit(expr, name)


def put_in(mod: tvm.IRModule, output_var, build) -> tuple[tvm.IRModule, list[str]]:
    """Replace ``output_var``'s block by ``build``; returns the module and the names of the
    bindings that now hold relearned weights (those ``build`` emitted, and ``output_var``'s own),
    which the records list so that later steps (chains, fine-tuning) find them by this map. (A
    new name may equal an old one — FoldBatchNorm also names its conv ``<name>_conv`` — so they
    are recorded as emitted, not found by comparing names.)"""
    emitted: list[str] = []
    mod = apply_plan(mod, {output_var: lambda em: build(_RecordingEmitter(em, emitted))})
    return mod, [n for n in emitted if n] + [output_var.name]


def emit_conv_unit(bb, unit: ConvUnit, data):
    """``unit``'s conv (+ bias) on ``data``, in float32, for teachers."""
    y = bb.emit(conv2d_like(unit.conv.attrs, data, relax.const(unit.weight.astype("float32"))))
    if unit.bias is not None:
        y = bb.emit(relax.op.add(y, relax.const(unit.bias.astype("float32").reshape(1, -1, 1, 1))))
    return y


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
        (:mod:`._select`; the application hands in :class:`rebirth_tvm.backend.site_latency.LatencySelector`); None rewrites every site.
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
        self.calibration = np.asarray(calibration, dtype=np.float32)
        if self.calibration.ndim != 4 or len(self.calibration) < 2:
            raise OptionError(f"calibration must be (N, C, H, W) with N >= 2, got shape {self.calibration.shape}")
        self.hook = resolve_hook(hook)
        self.selection = None if sites == "all" else ([sites] if isinstance(sites, str) else list(sites))
        #: decides per site whether the rewrite is worth it (a selector, see :mod:`._select`); None keeps all.
        self.selector = selector
        self.max_site_error = max_site_error
        if targets not in ("original", "block"):
            raise OptionError(f"targets must be 'original' or 'block', not {targets!r}")
        self.targets = targets

    def selected(self, name: str) -> bool:
        return self.selection is None or any(fnmatch.fnmatchcase(name, p) for p in self.selection)

    def find_sites(self, graph: FunctionGraph) -> Iterator[tuple[str, RelearnSite | str]]:
        return iter(())

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        self._reference = mod  # the network as it came: where the targets come from
        #: bindings this run emitted (a new conv's name → its site): a later site whose block
        #: starts at one of them is a chain, its targets taken at the original network's output
        self._emitted: dict[str, str] = {}
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
            mod, record = self.relearn(mod, site)
            if site.name in decisions:
                record.detail["latency"] = decisions[site.name]
            if record.status == REFUSED:  # over max_site_error: the module came back unchanged
                guarded[site.name] = record
                declined[site.name] = {"reason": record.reason}
                continue
            rewritten.append(record)
            self._emitted.update({binding: site.name for binding in record.detail.get("new_bindings", [])})
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

    def fit(self, name: str, geometry, init_weight, init_bias, inputs, targets, relu: bool, teacher=None):
        """This pass's hook and error limit through the one driver (:func:`rebirth_tvm.relearn.driver.fit`)."""
        return driver.fit(self.hook, name, geometry, init_weight, init_bias, inputs, targets, relu, teacher,
                          max_error=self.max_site_error)

    def refused(self, name: str, refusal: driver.Refusal, detail: dict) -> SiteRecord:
        return SiteRecord(self.pass_name, name, REFUSED, refusal.reason, exact=False, detail={**detail, **refusal.detail})

    def relearn(self, mod: tvm.IRModule, site: RelearnSite) -> tuple[tvm.IRModule, SiteRecord]:
        """Relearn ``site`` and put its new conv in; returns the module and the site's record
        (refused, with the module unchanged, when the fit misses ``max_site_error``)."""
        inputs = activations(mod, site.input_var, self.calibration)
        result = self.fit(site.name, site.geometry, site.init_weight, site.init_bias, inputs, self.targets_for(site, inputs),
                          site.relu, site.teacher)
        if isinstance(result, driver.Refusal):
            return mod, self.refused(site.name, result, {"pattern": site.pattern})
        g = site.geometry
        mod, new_bindings = put_in(mod, site.output_var, self.replacement(site, result.weight, result.bias))
        in_shape = [int(d) for d in site.input_var.ty.shape]
        out_shape = (in_shape[0], g.out_channels, *g.output_size(*in_shape[2:]))
        expected = (g.out_channels, g.in_channels, *g.kernel)
        return mod, SiteRecord(
            self.pass_name, site.name, REWRITTEN,
            f"{site.pattern} → one {g.kernel[0]}x{g.kernel[1]}/s{g.stride[0]} conv{'+relu' if site.relu else ''}; "
            f"held-out relative MSE {result.before['rel_mse']:.3g} → {result.after['rel_mse']:.3g}"
            + (" (the hook's fit was worse: initial weights kept)" if result.kept_initial else ""),
            exact=False,
            detail={"pattern": site.pattern, "kernel": list(g.kernel), "stride": list(g.stride), "padding": list(g.padding),
                    "input_shape": in_shape, "output_shape": [int(d) for d in out_shape],
                    "macs_before": site.macs_before, "macs_after": conv_macs(out_shape, expected),
                    "new_bindings": new_bindings, **result.detail,
                    # a chain: the site whose new conv this block starts with (it needs that site)
                    **({"builds_on": self._emitted[site.unit.conv_var.name]} if site.unit.conv_var.name in self._emitted else {})},
        )

    def targets_for(self, site: RelearnSite, inputs: np.ndarray) -> np.ndarray:
        """What the new conv must produce for ``inputs`` (the reborn network's activations).

        With ``targets="original"``: what the ORIGINAL network computed there, so the new conv
        maps what the reborn network really feeds it to the original values, and each site also
        corrects the drift of the sites below it instead of passing it on (otherwise errors
        compound layer by layer). For a site whose block starts with an original conv, that is
        the teacher block run on the original network's input activations (pre-activation
        targets). A chain site's block starts with a conv this run emitted (conv1 → pool1 →
        LRN: the LRN merge sees the new conv), which was never in the original network; its
        targets are the original network's value at the site's output. ``targets="block"`` (or
        a value the original network does not have): the block run on ``inputs``.
        """
        if site.unit.conv_var.name in self._emitted:
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
