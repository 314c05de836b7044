"""TuckerDecompose: a k×k conv becomes ``1×1 → k×k (fewer channels) → 1×1`` (Tucker-2).

The paper's fastest model pairs rebirth with Tucker decomposition (Kim et al., 2016): a conv's
OIHW kernel ``W`` is approximated as ``W ≈ G ×₀ U_out ×₁ U_in`` with ``U_in`` (I × r_in) and
``U_out`` (O × r_out) orthonormal and a small core ``G`` (r_out × r_in × kh × kw). As convs:

    x → conv 1×1 (U_inᵀ, r_in channels) → conv k×k (G, the original stride/padding) → conv 1×1 (U_out) + bias

Ranks come from an *energy* threshold (the smallest rank whose leading singular values of the
kernel's mode unfolding keep that fraction of its squared norm) or are given per site. Initial
factors are HOSVD (numpy SVDs of the two unfoldings); with full ranks the factors are square
orthogonal matrices and the decomposition is exact up to float rounding (recorded as exact).
Otherwise the last 1×1 conv and the bias are relearned by the retraining hook against the
original conv's outputs on the calibration inputs, with the first two convs held at their
HOSVD values — the same hooks and the same bottom-up order as every relearned merge, and the
same report: MACs before/after, the kernel's reconstruction error, fidelity before/after.

The "original" targets are the network as this pass receives it (after the other merges, in
``--rebirth --tucker``): Tucker corrects its own error, while Rebirth already corrected its own.

Refuses, with the reason: grouped or dilated convs; non-constant weights; a rank pair that does
not reduce MACs (unless ``allow_more_work``). 1×1 convs are not candidates (nothing to factor).
"""

from __future__ import annotations

import fnmatch
import time

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.conv_math import ConvGeometry, conv_macs
from rebirth_tvm.core.errors import OptionError
from rebirth_tvm.core.graph import FunctionGraph, op_name, shape_of
from rebirth_tvm.relearn import driver
from rebirth_tvm.relearn.activations import activations

from ._conv import CONV2D, conv2d_like, match_conv_at, plain_conv_refusal
from ._relearn import RelearnPass, compiled_teacher, emit_conv_unit, put_in
from ._sites import REWRITTEN, SiteRecord

MARK = "_tucker"  # bindings this pass emits; never decomposed again


def energy_rank(singular_values: np.ndarray, energy: float) -> int:
    """The smallest rank whose leading singular values keep ``energy`` of the squared norm."""
    power = np.asarray(singular_values, np.float64) ** 2
    if power.sum() == 0:
        return 1
    kept = np.cumsum(power) / power.sum()
    return int(min(len(power), np.searchsorted(kept, energy - 1e-12) + 1))


def round_up_rank(rank: int, multiple: int, channels: int) -> int:
    """``rank`` rounded up to a multiple of ``multiple``, at most ``channels``."""
    return min(channels, -(-rank // multiple) * multiple)


def mode_singular_values(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values of the output-channel and input-channel unfoldings of an OIHW kernel."""
    out_channels, in_channels = weight.shape[:2]
    w = weight.astype(np.float64)
    return (np.linalg.svd(w.reshape(out_channels, -1), compute_uv=False),
            np.linalg.svd(w.transpose(1, 0, 2, 3).reshape(in_channels, -1), compute_uv=False))


def hosvd_tucker2(weight: np.ndarray, rank_in: int, rank_out: int):
    """Tucker-2 factors of an OIHW kernel by HOSVD.

    Returns ``(first, core, last)`` as conv kernels: ``first`` (r_in, I, 1, 1), ``core``
    (r_out, r_in, kh, kw), ``last`` (O, r_out, 1, 1); ``conv(conv(conv(x, first), core), last)``
    approximates ``conv(x, weight)`` and equals it at full ranks.
    """
    w = weight.astype(np.float64)
    out_channels, in_channels, kh, kw = w.shape
    if not (1 <= rank_in <= in_channels and 1 <= rank_out <= out_channels):
        raise OptionError(f"ranks ({rank_in}, {rank_out}) outside [1, {in_channels}] x [1, {out_channels}]")
    # Full (square) U: a rank above the unfolding's column count (a stem conv's 3·k·k) still
    # gets orthonormal columns, so full ranks stay exact.
    u_out = np.linalg.svd(w.reshape(out_channels, -1), full_matrices=True)[0][:, :rank_out]
    u_in = np.linalg.svd(w.transpose(1, 0, 2, 3).reshape(in_channels, -1), full_matrices=True)[0][:, :rank_in]
    core = np.einsum("oihw,or,is->rshw", w, u_out, u_in)
    return u_in.T.reshape(rank_in, in_channels, 1, 1), core, u_out.reshape(out_channels, rank_out, 1, 1)


def reconstruct(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The OIHW kernel the three convs compute together."""
    return np.einsum("rshw,or,si->oihw", core, last[:, :, 0, 0], first[:, :, 0, 0])


def tucker_macs(in_shape, out_hw, in_channels, out_channels, rank_in, rank_out, kernel) -> int:
    """MACs of the three convs: 1×1 (in → rank_in) on the input, k×k core and 1×1 restore on the output grid."""
    n, _, h, w = in_shape
    return (conv_macs((n, rank_in, h, w), (rank_in, in_channels, 1, 1))
            + conv_macs((n, rank_out, *out_hw), (rank_out, rank_in, *kernel))
            + conv_macs((n, out_channels, *out_hw), (out_channels, rank_out, 1, 1)))


class TuckerSite:
    """One conv to decompose, with its ranks and HOSVD factors."""

    def __init__(self, name, unit, relu, ranks, factors, macs_before, macs_after, weight_error, input_var):
        self.name, self.unit, self.relu, self.ranks, self.factors = name, unit, relu, ranks, factors
        self.macs_before, self.macs_after, self.weight_error = macs_before, macs_after, weight_error
        self.input_var = input_var
        self.output_var = unit.out_var
        self.exact = ranks[0] == unit.weight.shape[1] and ranks[1] == unit.weight.shape[0]


@tvm.transform.module_pass(opt_level=0, name="TuckerDecompose")
class TuckerDecompose(RelearnPass):
    """Tucker-2 decomposition of k×k convs, relearned bottom-up.

    Parameters
    ----------
    calibration, hook, sites: see :class:`RelearnPass` (calibration may be None when every
        selected site is decomposed at full rank, which is exact).
    energy: fraction of each mode's squared singular values to keep (default 0.9), for sites
        without given ranks.
    ranks: ``{site name or glob: (rank_in, rank_out)}``; an int is a rank, a float in (0, 1] a
        fraction of the channels.
    allow_more_work: also decompose where the three convs need more MACs than the one.
    rank_multiple: round energy-chosen ranks up to a multiple of this (capped at the channel
        count). A kernel library that works on blocks of channels (the CPU kernels' ``NCHW16c``)
        runs a rank it does not divide out of the blocked layout, between layout transforms; and
        the block a network gets is the one its heavy convs divide, so ragged ranks can narrow it
        for every conv. Ranks given in ``ranks`` are used as given.
    selector: e.g. :class:`rebirth_tvm.backend.site_latency.LatencySelector`: decompose only where it measures faster.
    """

    pass_name = "TuckerDecompose"

    def __init__(self, calibration=None, hook="lstsq", sites="all", energy: float = 0.9, ranks=None,
                 allow_more_work: bool = False, selector=None, max_site_error: float | None = None, rank_multiple: int = 1):
        if calibration is None:
            calibration = np.zeros((2, 1, 1, 1), np.float32)  # only full-rank (exact) sites need none
            self.has_calibration = False
        else:
            self.has_calibration = True
        super().__init__(calibration, hook, sites, selector, max_site_error)
        if not 0 < energy <= 1:
            raise OptionError(f"energy must be in (0, 1], got {energy}")
        if not isinstance(rank_multiple, (int, np.integer)) or rank_multiple < 1:
            raise OptionError(f"rank_multiple must be a positive integer, got {rank_multiple!r}")
        self.energy, self.ranks, self.allow_more_work = energy, dict(ranks or {}), allow_more_work
        self.rank_multiple = int(rank_multiple)
        self._factors: dict = {}
        self._ranks: dict = {}
        self._energy_ranks: dict = {}

    def _reset_caches(self) -> None:
        super()._reset_caches()
        self._factors = {}  # keyed by site name: only valid within one module
        self._ranks = {}
        self._energy_ranks = {}  # the energy's ranks where rank_multiple rounded them up

    def _ranks_for(self, name: str, weight: np.ndarray) -> tuple[int, int]:
        out_channels, in_channels = weight.shape[:2]
        for pattern, (rank_in, rank_out) in self.ranks.items():
            if fnmatch.fnmatchcase(name, pattern):
                def resolve(r, full):
                    return max(1, int(round(r * full))) if isinstance(r, float) and r <= 1 else int(r)
                return min(resolve(rank_in, in_channels), in_channels), min(resolve(rank_out, out_channels), out_channels)
        s_out, s_in = mode_singular_values(weight)
        energy = energy_rank(s_in, self.energy), energy_rank(s_out, self.energy)
        rounded = (round_up_rank(energy[0], self.rank_multiple, in_channels), round_up_rank(energy[1], self.rank_multiple, out_channels))
        if rounded != energy:
            self._energy_ranks[name] = energy
        return rounded

    def find_sites(self, graph: FunctionGraph):
        for binding in graph.dataflow_bindings():
            if op_name(binding.value) != CONV2D or MARK in binding.var.name:
                continue
            unit = match_conv_at(graph, binding.var)
            if isinstance(unit, str):
                yield binding.var.name, unit
                continue
            kernel = tuple(int(k) for k in unit.weight.shape[2:])
            if kernel == (1, 1):
                continue  # nothing to factor: not a candidate
            name = unit.out_var.name
            reason = plain_conv_refusal(unit)
            if reason:
                yield name, reason
                continue
            if name not in self._ranks:  # find_sites runs again after every rewrite: one SVD per site
                self._ranks[name] = self._ranks_for(name, unit.weight)
            rank_in, rank_out = self._ranks[name]
            in_shape, out_shape = shape_of(unit.conv.args[0]), shape_of(unit.conv)
            before = conv_macs(out_shape, unit.weight.shape)
            after = tucker_macs(in_shape, out_shape[2:], unit.weight.shape[1], unit.weight.shape[0], rank_in, rank_out, kernel)
            if after >= before and not self.allow_more_work:
                rounded = (f" (the energy's {self._energy_ranks[name]} rounded up to multiples of {self.rank_multiple})"
                           if name in self._energy_ranks else "")
                yield name, (f"ranks ({rank_in}, {rank_out}){rounded} of {unit.weight.shape[1]}→{unit.weight.shape[0]} channels would not save MACs "
                             f"({before:,} → {after:,}); lower the energy or give ranks, or allow_more_work")
                continue
            key = (name, rank_in, rank_out)
            if key not in self._factors:  # find_sites runs again after every rewrite
                factors = hosvd_tucker2(unit.weight, rank_in, rank_out)
                w = unit.weight.astype(np.float64)
                self._factors[key] = factors, float(np.linalg.norm(reconstruct(*factors) - w) / max(np.linalg.norm(w), 1e-30))
            factors, error = self._factors[key]
            users = graph.live_users(unit.out_var)
            relu = len(users) == 1 and users[0] is not None and op_name(graph.producer(users[0])) == "relax.nn.relu"
            site = TuckerSite(name, unit, relu, (rank_in, rank_out), factors, before, after, error, unit.conv.args[0])
            if not site.exact and not self.has_calibration:
                yield name, "needs calibration inputs to relearn (only full-rank decompositions are exact)"
                continue
            yield name, site

    def relearn(self, mod: tvm.IRModule, site: TuckerSite) -> tuple[tvm.IRModule, SiteRecord]:
        start = time.perf_counter()
        unit, (rank_in, rank_out) = site.unit, site.ranks
        first, core, last = site.factors
        bias = np.zeros(unit.channels) if unit.bias is None else unit.bias.astype(np.float64)
        detail = {"pattern": "conv → 1x1 → kxk → 1x1 (Tucker-2)", "ranks": [rank_in, rank_out],
                  "channels": [int(unit.weight.shape[1]), int(unit.weight.shape[0])], "kernel": [int(k) for k in unit.weight.shape[2:]],
                  "stride": [int(s) for s in unit.conv.attrs.strides],
                  "macs_before": site.macs_before, "macs_after": site.macs_after, "weight_error": site.weight_error}
        if site.name in self._energy_ranks:
            detail["energy_ranks"] = list(self._energy_ranks[site.name])  # before rank_multiple rounded them up
        if site.exact:
            reason = f"full ranks ({rank_in}, {rank_out}): exact, kernel reconstruction error {site.weight_error:.2g}"
        else:
            inputs = activations(mod, site.input_var, self.calibration)
            original = self.reference_activations(site.input_var)  # see RelearnPass.targets_for
            targets = compiled_teacher(lambda bb, x: emit_conv_unit(bb, unit, x))(original if original is not None else inputs)
            reduced = compiled_teacher(lambda bb, x: self._emit_reduce(bb, unit, x, first, core))(inputs)
            # Only the restoring 1×1 conv is relearned: it maps the HOSVD-reduced features to the
            # original conv's output (the first two factors stay as the decomposition made them).
            result = self.fit(site.name, ConvGeometry(rank_out, unit.channels, (1, 1)), last, bias, reduced, targets, site.relu)
            if isinstance(result, driver.Refusal):
                return mod, self.refused(site.name, result, detail)
            last, bias = result.weight, result.bias
            detail.update(result.detail)
            reason = (f"ranks ({rank_in}, {rank_out}), MACs {site.macs_before:,} → {site.macs_after:,}; "
                      f"held-out relative MSE {result.before['rel_mse']:.3g} (HOSVD) → {result.after['rel_mse']:.3g} (relearned)"
                      + (" (the hook's fit was worse: HOSVD weights kept)" if result.kept_initial else ""))
        mod, detail["new_bindings"] = put_in(mod, site.output_var, self.replacement(site, last, bias))
        detail["seconds"] = round(time.perf_counter() - start, 3)
        return mod, SiteRecord(self.pass_name, site.name, REWRITTEN, reason, exact=site.exact, detail=detail)

    def replacement(self, site: TuckerSite, last: np.ndarray | None = None, bias: np.ndarray | None = None):
        """``build(emitter)``: 1×1 → k×k → 1×1 + bias on the site's input (HOSVD factors by default)."""
        unit = site.unit
        first, core, initial_last = site.factors
        last = initial_last if last is None else last
        if bias is None:
            bias = np.zeros(unit.channels) if unit.bias is None else unit.bias.astype(np.float64)
        dtype = unit.dtype

        def build(em):
            x = em.remap(site.input_var)
            y = em.emit(self._emit_reduce(None, unit, x, first, core, em), site.name + MARK + "_core")
            y = em.emit(conv2d_like(unit.conv.attrs, y, relax.const(np.asarray(last).astype(dtype)), strides=[1, 1], padding=[0, 0, 0, 0]),
                        site.name + MARK + "_restore")
            return relax.op.add(y, relax.const(np.asarray(bias).astype(dtype).reshape(1, -1, 1, 1)))

        return build

    @staticmethod
    def _emit_reduce(bb, unit, x, first, core, em=None):
        """``conv k×k (core) ∘ conv 1×1 (first)`` on ``x``: the reduced-channel part."""
        dtype = unit.dtype if em is not None else "float32"
        emit = em.emit if em is not None else bb.emit
        name = unit.out_var.name + MARK + "_reduce" if em is not None else ""
        z = emit(conv2d_like(unit.conv.attrs, x, relax.const(first.astype(dtype)), strides=[1, 1], padding=[0, 0, 0, 0]), name)
        return conv2d_like(unit.conv.attrs, z, relax.const(core.astype(dtype)))
