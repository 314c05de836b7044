"""Rebirth: every relearned merge in one bottom-up pass — DeepRebirth's streamline and branch
merging together.

Rules: :class:`MergeConvLRN`, :class:`MergeConvPool` (streamline), and the pool-branch and
reduce rules of :class:`MergeInceptionBranches` (branch). The lowest rewritable site of any rule
is always taken next, so every site is relearned on the network as already rewritten below it.
Run :class:`DistributePoolOverConcat` first to give inception modules followed by a pool
strided branches (``rebirth_tvm`` does).
"""

from __future__ import annotations

import numpy as np
import tvm

from ._relearn import CombinedRelearn
from .merge_conv_lrn import MergeConvLRN
from .merge_conv_pool import MergeConvPool
from .merge_inception_branches import MergePoolProjection, MergeReduceConv


@tvm.transform.module_pass(opt_level=0, name="Rebirth")
class Rebirth(CombinedRelearn):
    """Streamline and branch merges, relearned bottom-up.

    Parameters
    ----------
    calibration, hook, sites: see :class:`RelearnPass`.
    pool_kernel: conv+pool merges: ``"auto"`` (default), ``"cover"`` or ``"keep"``.
    branches: branch rules to run, from ``("pool", "reduce")``; ``()`` for streamline only.
    branch_pool_kernel: pool-branch merges: ``"keep"`` (default) or ``"cover"``.
    allow_more_work: also make branch merges that add MACs (refused by default, with numbers).
    streamline: run the streamline rules (conv+LRN, conv+pool); ``False`` with ``branches`` set
        gives branch merging alone (the paper's ablation).
    selector: e.g. :class:`LatencySelector`: rewrite only the sites that measure faster.
    max_site_error: put back any site whose relearned held-out relative MSE stays above this.
    targets: ``"original"`` (default) or ``"block"``; see :class:`RelearnPass`.
    """

    pass_name = "Rebirth"

    def __init__(self, calibration: np.ndarray, hook="lstsq", sites="all", pool_kernel: str = "auto",
                 branches=("pool", "reduce"), branch_pool_kernel: str = "keep", allow_more_work: bool = False,
                 streamline: bool = True, selector=None, max_site_error: float | None = None, targets: str = "original"):
        super().__init__(calibration, hook, sites, selector, max_site_error, targets)
        if set(branches) - {"pool", "reduce"}:
            raise ValueError(f"branches must be from ('pool', 'reduce'), got {branches}")
        if not streamline and not branches:
            raise ValueError("nothing to do: streamline=False and no branches")
        self.rules = [MergeConvLRN(calibration, hook, sites), MergeConvPool(calibration, hook, pool_kernel, sites)] if streamline else []
        if "pool" in branches:
            self.rules.append(MergePoolProjection(calibration, hook, sites, allow_more_work, branch_pool_kernel))
        if "reduce" in branches:
            self.rules.append(MergeReduceConv(calibration, hook, sites, allow_more_work))
