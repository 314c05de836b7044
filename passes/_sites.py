"""What a pass did, site by site.

Every pass in ``rebirth_tvm.passes`` records one :class:`SiteRecord` per place it looked at: a
site it rewrote, or a site it refused with a reason a person can read. Nothing changes silently.

Records are kept on the pass object (``pass_.sites`` after it ran) and, for passes run deep inside
someone else's pipeline, by every active :func:`record_sites` collector::

    with record_sites() as sites:
        mod = tvm.transform.Sequential([FoldBatchNorm(), relax.transform.FoldConstant()])(mod)
    for site in sites: print(site.pass_name, site.site, site.status, site.reason)
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

REWRITTEN = "rewritten"
REFUSED = "refused"


@dataclass
class SiteRecord:
    """One place a pass looked at.

    Attributes
    ----------
    pass_name: the pass (``FoldBatchNorm``).
    site: the binding it is about, named after the ONNX node where the importer gave one.
    status: ``"rewritten"`` or ``"refused"``.
    reason: why it was refused, or what the rewrite did.
    exact: True for rewrites that are exact up to float rounding; False for relearned ones.
    detail: numbers a report may show (shapes, MACs before/after, ...).
    """

    pass_name: str
    site: str
    status: str
    reason: str
    exact: bool = True
    function: str = "main"
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_collectors: list[list[SiteRecord]] = []


@contextlib.contextmanager
def record_sites() -> Iterator[list[SiteRecord]]:
    """Collect the records of every rebirth pass that runs inside the ``with`` block."""
    sites: list[SiteRecord] = []
    _collectors.append(sites)
    try:
        yield sites
    finally:
        # By identity: two collectors holding equal records compare equal as lists.
        del _collectors[next(i for i, c in enumerate(_collectors) if c is sites)]


@contextlib.contextmanager
def hidden_from_collectors() -> Iterator[None]:
    """Run passes whose records are interim (a composite pass reports its own summary)."""
    saved = _collectors[:]
    _collectors.clear()
    try:
        yield
    finally:
        _collectors[:] = saved


def publish(records: list[SiteRecord]) -> None:
    for sites in _collectors:
        sites.extend(records)


def count_sites(sites) -> dict[str, int]:
    """How many sites were rewritten and refused, from records or their JSON (a report's
    ``sites``): ``rewritten``, ``refused``, and of the rewritten ones ``exact`` and ``relearned``,
    and ``refused_relearned`` (relearned rewrites refused: not selected, too far, slower)."""
    rows = [s.to_json() if isinstance(s, SiteRecord) else s for s in sites]
    return {
        "rewritten": sum(1 for s in rows if s["status"] == REWRITTEN),
        "refused": sum(1 for s in rows if s["status"] == REFUSED),
        "exact": sum(1 for s in rows if s["status"] == REWRITTEN and s["exact"]),
        "relearned": sum(1 for s in rows if s["status"] == REWRITTEN and not s["exact"]),
        "refused_relearned": sum(1 for s in rows if s["status"] == REFUSED and not s["exact"]),
    }
