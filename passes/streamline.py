"""StreamlineMerge: DeepRebirth's streamline (vertical) merging, chains included.

One relearning pass with both rules, :class:`MergeConvLRN` and :class:`MergeConvPool`, always
taking the lowest site of either kind: chains collapse bottom-up. GoogLeNet's
``conv1 → ReLU → pool1 → LRN`` becomes one conv (the pool merge first, then the LRN merge sees
``conv' → ReLU``), and ``conv2 → ReLU → LRN → pool2`` likewise (LRN first, then the pool). Each
step is relearned on the network as rewritten below it.
"""

from __future__ import annotations

import numpy as np
import tvm

from ._relearn import CombinedRelearn
from .merge_conv_lrn import MergeConvLRN
from .merge_conv_pool import MergeConvPool


@tvm.transform.module_pass(opt_level=0, name="StreamlineMerge")
class StreamlineMerge(CombinedRelearn):
    """Merge conv (+ReLU) with the LRNs and pools that follow it, chains included; relearned.

    Parameters: ``calibration``, ``hook``, ``sites``, ``selector``, ``max_site_error``, ``targets``
    as for :class:`RelearnPass`; ``kernel`` for the pool merges (``"auto"``, ``"cover"`` or ``"keep"``).
    """

    pass_name = "StreamlineMerge"

    def __init__(self, calibration: np.ndarray, hook="lstsq", kernel: str = "auto", sites="all", selector=None,
                 max_site_error: float | None = None, targets: str = "original"):
        super().__init__(calibration, hook, sites, selector, max_site_error, targets)
        self.rules = [MergeConvLRN(calibration, hook, sites), MergeConvPool(calibration, hook, kernel, sites)]
