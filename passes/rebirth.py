"""Rebirth: every relearned merge in one bottom-up pass — DeepRebirth's streamline and branch
merging together — and its two presets.

Rules (one family per file, each a pattern, a check returning the reason it refuses, and a
rewrite):

======================  =========================================================  ==========
rule                    pattern ⇒ rewrite                                          file
======================  =========================================================  ==========
MergeConvLRN            conv (+bias) (+ReLU) → LRN ⇒ one conv (+ReLU)              merge_conv_lrn.py
MergeConvPool           conv (+bias) (+ReLU) → max/avg pool ⇒ one strided conv     merge_conv_pool.py
MergePoolProjection     3×3/s1 max pool → 1×1 projection ⇒ one conv on the input   merge_inception_branches.py
MergeReduceConv         1×1 reduce → ReLU → k×k ⇒ one k×k conv on the input        merge_inception_branches.py
======================  =========================================================  ==========

:class:`Rebirth` runs them all; :class:`StreamlineMerge` (the streamline rules: GoogLeNet's
``conv1 → ReLU → pool1 → LRN`` and ``conv2 → ReLU → LRN → pool2`` each collapse into one conv,
chains included) and :class:`MergeInceptionBranches` (the branch rules) are its presets. The
lowest rewritable site of any rule is always taken next, so every site is relearned on the
network as already rewritten below it. Run :class:`DistributePoolOverConcat` first to give
inception modules followed by a pool strided branches (``rebirth_tvm`` does).

One name per policy, checked where it enters: ``pool_kernel`` (conv+pool merges: ``"auto"``,
``"cover"``, ``"keep"``) and ``branch_pool_kernel`` (pool branches: ``"keep"``, ``"cover"``).
"""

from __future__ import annotations

import numpy as np
import tvm

from rebirth_tvm.core.errors import OptionError

from ._relearn import CombinedRelearn
from .merge_conv_lrn import MergeConvLRN
from .merge_conv_pool import POOL_KERNELS, MergeConvPool, check_pool_kernel
from .merge_inception_branches import BRANCH_POOL_KERNELS, MergePoolProjection, MergeReduceConv

#: The inception branch merges :class:`Rebirth` can run.
BRANCH_MERGES = ("pool", "reduce")
__all__ = ["BRANCH_MERGES", "BRANCH_POOL_KERNELS", "POOL_KERNELS", "MergeInceptionBranches", "Rebirth", "StreamlineMerge"]


class _RebirthRules(CombinedRelearn):
    """The combined pass's body: the rules a preset asks for, every option checked."""

    def __init__(self, calibration: np.ndarray, hook="lstsq", sites="all", pool_kernel: str = "auto",
                 branches=BRANCH_MERGES, branch_pool_kernel: str = "keep", allow_more_work: bool = False,
                 streamline: bool = True, selector=None, max_site_error: float | None = None, targets: str = "original"):
        super().__init__(calibration, hook, sites, selector, max_site_error, targets)
        if set(branches) - set(BRANCH_MERGES):
            raise OptionError(f"branches must be from ('pool', 'reduce'), got {branches}")
        # Checked even when no rule uses them: a typo is never silently a default.
        check_pool_kernel(pool_kernel)
        if branch_pool_kernel not in BRANCH_POOL_KERNELS:
            raise OptionError(f"branch_pool_kernel must be 'keep' or 'cover', not {branch_pool_kernel!r}")
        if not streamline and not branches:
            raise OptionError("nothing to do: streamline=False and no branches")
        self.rules = [MergeConvLRN(calibration, hook, sites), MergeConvPool(calibration, hook, pool_kernel, sites)] if streamline else []
        if "pool" in branches:
            self.rules.append(MergePoolProjection(calibration, hook, sites, allow_more_work, branch_pool_kernel))
        if "reduce" in branches:
            self.rules.append(MergeReduceConv(calibration, hook, sites, allow_more_work))


@tvm.transform.module_pass(opt_level=0, name="Rebirth")
class Rebirth(_RebirthRules):
    """Streamline and branch merges, relearned bottom-up.

    Parameters
    ----------
    calibration, hook, sites, selector, max_site_error, targets: see :class:`RelearnPass`.
    pool_kernel: conv+pool merges: ``"auto"`` (default), ``"cover"`` or ``"keep"``.
    branches: branch rules to run, from ``("pool", "reduce")``; ``()`` for streamline only.
    branch_pool_kernel: pool-branch merges: ``"keep"`` (default) or ``"cover"``.
    allow_more_work: also make branch merges that add MACs (refused by default, with numbers).
    streamline: run the streamline rules (conv+LRN, conv+pool); ``False`` with ``branches`` set
        gives branch merging alone (the paper's ablation).
    """

    pass_name = "Rebirth"


@tvm.transform.module_pass(opt_level=0, name="StreamlineMerge")
class StreamlineMerge(_RebirthRules):
    """:class:`Rebirth` with the streamline rules only: conv (+ReLU) merged with the LRNs and
    pools that follow it, chains included; relearned."""

    pass_name = "StreamlineMerge"

    def __init__(self, calibration: np.ndarray, hook="lstsq", pool_kernel: str = "auto", sites="all", selector=None,
                 max_site_error: float | None = None, targets: str = "original"):
        super().__init__(calibration, hook, sites, pool_kernel=pool_kernel, branches=(), selector=selector,
                         max_site_error=max_site_error, targets=targets)


@tvm.transform.module_pass(opt_level=0, name="MergeInceptionBranches")
class MergeInceptionBranches(_RebirthRules):
    """:class:`Rebirth` with the branch rules only: inception branches merged into convs on the
    module input; relearned; work-aware (a merge that adds MACs is refused unless
    ``allow_more_work``; see :mod:`.merge_inception_branches`)."""

    pass_name = "MergeInceptionBranches"

    def __init__(self, calibration: np.ndarray, hook="lstsq", sites="all", branches=BRANCH_MERGES,
                 branch_pool_kernel: str = "keep", allow_more_work: bool = False, selector=None,
                 max_site_error: float | None = None, targets: str = "original"):
        super().__init__(calibration, hook, sites, branches=branches, branch_pool_kernel=branch_pool_kernel,
                         allow_more_work=allow_more_work, streamline=False, selector=selector,
                         max_site_error=max_site_error, targets=targets)
