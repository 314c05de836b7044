"""How close two sets of outputs are: the numbers every check and fidelity report uses."""

from __future__ import annotations

import numpy as np


def output_difference(outputs, references) -> dict[str, float]:
    """``max_abs_diff`` = max |out − ref|; ``max_rel_diff`` = max |out − ref| / max |ref|.

    The relative error is taken against the output's scale, not element-wise, because logits near
    zero make element-wise ratios meaningless. It cannot fail open: a NaN or infinity in the
    output makes both differences infinite, unless the reference has the very same non-finite
    value at the same place (the model's own, counted in ``nonfinite_in_reference``); the scale
    is taken over the finite reference values only.
    """
    outputs = outputs if isinstance(outputs, list) else [outputs]
    references = references if isinstance(references, list) else [references]
    if len(outputs) != len(references):
        raise AssertionError(f"{len(outputs)} outputs but the reference has {len(references)}")
    abs_diff, rel_diff, shared = 0.0, 0.0, 0
    for out, ref in zip(outputs, references):
        out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if out.shape != ref.shape:
            raise AssertionError(f"output shape {out.shape} differs from the reference's {ref.shape}")
        finite_ref, finite_out = np.isfinite(ref), np.isfinite(out)
        odd = ~finite_ref | ~finite_out
        same_odd = np.array_equal(np.isnan(out[odd]), np.isnan(ref[odd])) and np.array_equal(
            np.nan_to_num(out[odd], nan=0.0), np.nan_to_num(ref[odd], nan=0.0))
        if not same_odd:  # a NaN or infinity of the output's own, or a different one
            abs_diff = rel_diff = float("inf")
            continue
        shared += int(np.count_nonzero(odd))
        keep = ~odd
        diff = float(np.max(np.abs(out[keep] - ref[keep]))) if np.any(keep) else 0.0
        scale = float(np.max(np.abs(ref[keep]))) if np.any(keep) else 0.0
        abs_diff = max(abs_diff, diff)
        rel_diff = max(rel_diff, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
    result = {"max_abs_diff": abs_diff, "max_rel_diff": rel_diff}
    if shared:
        result["nonfinite_in_reference"] = shared
    return result


def logit_agreement(outputs: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """How closely classifier outputs (N, classes) follow the reference's.

    ``top1_agreement``: same top-1 class; ``top5_agreement``: the reference's top-1 class is in
    the output's top 5; ``relative_logit_error``: ‖out − ref‖² / ‖ref‖² over all logits;
    ``cosine``: of the flattened logits.
    """
    out = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    ref = np.asarray(references, np.float64).reshape(len(references), -1)
    top1 = np.argmax(ref, axis=1)
    top5 = np.argsort(-out, axis=1)[:, :5]
    return {
        "samples": int(len(out)),
        "top1_agreement": float(np.mean(np.argmax(out, axis=1) == top1)),
        "top5_agreement": float(np.mean([t in row for t, row in zip(top1, top5)])),
        "relative_logit_error": float(np.sum((out - ref) ** 2) / max(np.sum(ref ** 2), 1e-30)),
        "cosine": float(out.ravel() @ ref.ravel() / max(np.linalg.norm(out) * np.linalg.norm(ref), 1e-30)),
    }
