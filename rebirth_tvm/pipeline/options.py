"""What a compile is asked to do, checked where it enters.

:class:`RebirthOptions` (the relearned rewrites) and :class:`CompileOptions` (everything else) are
validated when they are made: a bad value fails in one line before any work, whether it came
from the CLI or from Python. The target inside :class:`CompileOptions` is resolved once
(:class:`~rebirth_tvm.backend.targets.Target`) and carried to every stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rebirth_tvm.backend.targets import Target
from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.passes.rebirth import BRANCH_MERGES, BRANCH_POOL_KERNELS, POOL_KERNELS

PASS_SETS = ("exact", "none")
VERIFY_METHODS = ("qemu", "native", "rpc")
SELECTIONS = ("all", "latency")


@dataclass(frozen=True)
class RebirthOptions:
    """How the relearned (lossy) rewrites run; see :func:`rebirth_tvm.compile_model`.

    calib: a folder of images, an ``.npy`` file, an array/iterable, ``"fashion-mnist"`` or
        ``"random"`` (labelled as such in the report).
    hook: ``"lstsq"``, ``"sgd"``, a callable ``hook(RetrainSite) -> (weight, bias)``, or ``"module:function"``.
    sites: ``"all"`` or names / glob patterns of the sites to rewrite.
    pool_kernel: conv+pool (streamline) merges: ``"auto"`` (grow to the pool's receptive field
        where that adds no MACs), ``"cover"`` or ``"keep"``.
    branch_pool_kernel: inception pool-branch merges: ``"keep"`` (the projection's 1×1) or
        ``"cover"`` (grown by the pool window).
    branches: inception branch merges to run, from ``("pool", "reduce")``; ``()`` for none.
    allow_more_work: also make branch merges that add MACs (refused by default, with numbers).
    streamline: run the streamline merges (conv+pool, conv+LRN); False for branch merges only.
    select: ``"all"`` or ``"latency"``: time each site's block and its rewrite on the target (here
        or over RPC, tuned kernels where the tuning database has them) and keep only rewrites
        faster by ``select_margin``.
    tucker: also decompose the k×k convs left (Tucker-2, ranks by this energy), relearned.
    max_site_error: put back any relearned site whose held-out relative MSE stays above this.
    refit_classifier: refit the final FC layer to the original logits after the merges.
    finetune: optional labelled fine-tuning of the whole reborn network
        (:class:`rebirth_tvm.relearn.finetune.FinetuneOptions`; the paper's last step).
    max_drop: keep the most sites whose rebirth keeps the held-out top-1 agreement with the
        original within this many points of 100% (the sites that cost the most alone are put
        back first); measured on the held-out calibration inputs.
    distill: optional end-to-end distillation without labels after the relearned rewrites
        (:class:`rebirth_tvm.relearn.distill.DistillOptions`): the reborn network learns the
        original's logits on the calibration images.
    preset: image preprocessing (default: the zoo model's, else ``"imagenet"``).
    calib_count: use at most this many calibration inputs.
    """

    calib: object
    hook: object = "lstsq"
    sites: object = "all"
    pool_kernel: str = "auto"
    branch_pool_kernel: str = "keep"
    branches: tuple = BRANCH_MERGES
    allow_more_work: bool = False
    preset: str | None = None
    calib_count: int | None = None
    streamline: bool = True
    finetune: object = None
    select: str = "all"
    select_margin: float = 0.05
    tucker: float | None = None
    max_site_error: float | None = None
    refit_classifier: bool = False
    distill: object = None
    max_drop: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "branches", tuple(self.branches))
        if self.calib is None:
            raise RebirthError("--rebirth needs --calib (a folder of images, an .npy file, 'fashion-mnist' or 'random')")
        if set(self.branches) - set(BRANCH_MERGES):
            raise RebirthError(f"--branches {','.join(self.branches)!r}: use pool, reduce, pool,reduce or none")
        if self.pool_kernel not in POOL_KERNELS:
            raise RebirthError(f"--pool-kernel {self.pool_kernel!r}: use {', '.join(POOL_KERNELS)}")
        if self.branch_pool_kernel not in BRANCH_POOL_KERNELS:
            raise RebirthError(f"branch_pool_kernel {self.branch_pool_kernel!r}: use {', '.join(BRANCH_POOL_KERNELS)}")
        if not self.streamline and not self.branches and self.tucker is None and not self.refit_classifier and self.finetune is None:
            raise RebirthError("--no-streamline with --branches none leaves nothing to relearn")
        if self.tucker is not None and not 0 < self.tucker <= 1:
            raise RebirthError(f"--tucker ENERGY must be in (0, 1], got {self.tucker}")
        if self.select not in SELECTIONS:
            raise RebirthError(f"select must be 'all' or 'latency', not {self.select!r}")
        if not 0 <= self.select_margin < 1:
            raise RebirthError(f"--select-margin must be in [0, 1), got {self.select_margin}")
        if self.calib_count is not None and self.calib_count < 1:
            raise RebirthError(f"--calib-count must be 1 or more, got {self.calib_count}")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise RebirthError(f"--max-drop POINTS must be between 0 and 100 (points of top-1 agreement), got {self.max_drop}")
        if self.max_site_error is not None and not self.max_site_error > 0:
            raise RebirthError(f"--max-site-error must be above 0, got {self.max_site_error}")


@dataclass(frozen=True)
class TuningOptions:
    """MetaSchedule tuning of the final module: ``trials`` in all (0: only apply ``database``),
    the database directory (None: a temporary one), a cap per task."""

    trials: int = 0
    database: str | None = None
    max_trials_per_task: int | None = None

    def __post_init__(self):
        if self.trials < 0:
            raise RebirthError(f"--tune-trials must be 0 or more, got {self.trials}")
        if self.max_trials_per_task is not None and self.max_trials_per_task < 1:
            raise RebirthError(f"--max-trials-per-task must be 1 or more, got {self.max_trials_per_task}")
        if self.database is not None and not str(self.database).strip():
            raise RebirthError("--tuning-db is empty: name a directory")
        if self.database is not None and os.path.lexists(self.database) and not os.path.isdir(self.database):
            raise RebirthError(f"--tuning-db {self.database} is a file; it must be a directory (created if missing)")

    @property
    def wanted(self) -> bool:
        return bool(self.trials or self.database)


@dataclass(frozen=True)
class CompileOptions:
    """Everything a compile does besides the model; see :func:`rebirth_tvm.compile_model`."""

    target: Target
    passes: str = "exact"
    input_shape: object = None
    allow_kernel_padding: bool = False
    merge_parallel: bool = True
    seed: int = 0
    rebirth: RebirthOptions | None = None
    tuning: TuningOptions = TuningOptions()
    #: an :class:`~rebirth_tvm.backend.remote.RpcDevice`: tuning measures on it, ``verify="rpc"`` runs there
    rpc: object = None
    verify: str | None = None
    runner: bool = False
    evaluate: str | None = None
    #: the user's input normalisation (:class:`~rebirth_tvm.frontend.preprocessing.Normalisation`),
    #: over the model's preset, for calibration images and the labelled evaluation images
    normalisation: object = None

    def __post_init__(self):
        target = self.target
        if self.passes not in PASS_SETS:
            raise RebirthError(f"unknown pass set {self.passes!r}; known: {', '.join(PASS_SETS)}")
        if self.seed < 0:
            raise RebirthError(f"--seed must be 0 or more, got {self.seed}")
        if self.normalisation is not None and self.normalisation.given and not (self.rebirth or self.evaluate):
            raise RebirthError("--mean, --std, --pixel-range and --channel-order preprocess images for --rebirth and --evaluate; "
                               "neither was asked for")
        if self.evaluate and not target.runs_here:
            raise RebirthError(f"--evaluate runs the compiled model, and {target.label} builds cannot run here")
        if self.rebirth and self.rebirth.select == "latency" and self.rpc is None:
            target.require_runs_here("--select latency times each site on the target")
        if self.tuning.wanted:
            target.require_tunable(self.rpc)
        if self.verify is not None:
            self._check_verify()

    def _check_verify(self) -> None:
        """Refuse a verification that cannot run, before any heavy work."""
        method, target = self.verify, self.target
        if method not in VERIFY_METHODS:
            raise RebirthError(f"unknown --verify {method!r}; known: {', '.join(VERIFY_METHODS)}")
        if method == "qemu" and not target.is_aarch64:
            raise RebirthError("--verify qemu runs arm (aarch64) builds; for x86 use --verify native")
        if method == "native" and (target.is_cuda or not target.runs_here):
            other = "--verify rpc (on a GPU machine)" if target.is_cuda else "--verify qemu or rpc"
            raise RebirthError(f"--verify native runs CPU builds for this machine; a build for {target.describe()} needs {other}")
        if method == "rpc" and self.rpc is None:
            raise RebirthError("--verify rpc needs --rpc-tracker HOST:PORT and --rpc-key KEY")

    @property
    def native_runner(self) -> bool:
        """Whether this compile builds the native runner (asked for, or to verify with)."""
        return self.runner or self.verify in ("qemu", "native")
