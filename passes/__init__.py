"""rebirth-tvm's graph passes: each a ``tvm.transform.Pass`` for Relax modules.

Exact passes (faithful up to float rounding):

* :class:`FoldBatchNorm` — conv2d (+bias) → batch_norm becomes one conv2d + bias.
* :class:`FoldChannelAffine` — conv2d (+bias) → per-channel multiply / add becomes one conv2d + bias.
* :class:`MergeParallelConvs` — convs reading the same tensor become one conv whose output is sliced.
* :class:`DistributePoolOverConcat` — pool(concat(a, b)) becomes concat(pool(a), pool(b)).

Every pass records what it did per site (:class:`SiteRecord`): rewritten, or refused with a reason.
They compose with TVM's own passes::

    seq = tvm.transform.Sequential([FoldBatchNorm(), relax.transform.FoldConstant(), MergeParallelConvs()])
"""

import tvm
from tvm import relax

from ._sites import REFUSED, REWRITTEN, SiteRecord, count_sites, record_sites
from .distribute_pool import DistributePoolOverConcat
from .fold_batch_norm import FoldBatchNorm
from .fold_channel_affine import FoldChannelAffine
from .merge_conv_lrn import MergeConvLRN
from .merge_conv_pool import MergeConvPool
from .merge_parallel_convs import MergeParallelConvs
from .rebirth import MergeInceptionBranches, Rebirth, StreamlineMerge
from .refit_classifier import RefitClassifier
from .tucker_decompose import TuckerDecompose


def exact_pipeline(merge_parallel: bool = True, allow_kernel_padding: bool = False) -> tvm.transform.Pass:
    """The exact rewrites in the order that lets each see the previous one's result.

    BN first (it leaves ``conv + bias``), then any per-channel affine tail, then the sibling merge,
    which needs every conv in its final ``conv + bias`` form to take the bias along.
    """
    stages = [FoldBatchNorm(), FoldChannelAffine()]
    if merge_parallel:
        stages.append(MergeParallelConvs(allow_kernel_padding=allow_kernel_padding))
    stages.append(relax.transform.FoldConstant())
    return tvm.transform.Sequential(stages, name="RebirthExact")


__all__ = [
    "FoldBatchNorm", "FoldChannelAffine", "MergeParallelConvs", "DistributePoolOverConcat", "MergeConvPool", "MergeConvLRN", "StreamlineMerge", "MergeInceptionBranches", "Rebirth", "TuckerDecompose", "RefitClassifier",
    "exact_pipeline",
    "SiteRecord", "record_sites", "count_sites", "REWRITTEN", "REFUSED",
]
