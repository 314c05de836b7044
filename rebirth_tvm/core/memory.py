"""Refuse, in one line, data this machine cannot hold (calibration sets, huge input shapes)."""

from __future__ import annotations

from rebirth_tvm.core.errors import RebirthError


def check_fits_in_memory(nbytes: int, what: str, share: float = 0.5) -> None:
    """Refuse, in one line, data that would take more than ``share`` of the memory available now
    (numpy would otherwise fail deep inside, or the machine would swap to a halt)."""
    import psutil

    available = psutil.virtual_memory().available
    if nbytes > share * available:
        raise RebirthError(f"{what} need {nbytes / 2**30:.1f} GiB, more than this machine can spare "
                           f"({available / 2**30:.1f} GiB available)")
