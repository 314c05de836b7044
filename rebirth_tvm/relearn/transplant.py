"""Recovered weights carried into a network that reborns fewer sites.

Distillation trains a reborn network as a whole: every relearned conv and, more gently, every
other weight. ``--max-drop`` then asks which sites to put back. Distilling each candidate set
again would cost minutes per trial; instead the network with every site reborn is distilled
once, and a candidate set is that network with the put-back sites' original blocks restored:
each weight of the candidate's ``main`` takes the recovered value of the weight in the same
place (the binding of the same name, the same argument) when there is one of the same shape and
dtype. What is measured for a candidate is then exactly what would be shipped.

A binding whose name the recovered network uses for something else is never given its weight:
the put-back sites' new bindings (a merged conv may carry the name of the conv it replaced) are
passed as ``skip``, and a name bound twice in either function is ambiguous and skipped.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.relearn.finetune import _rebuilt_main, lift_weights


def _weight_places(func: relax.Function) -> list[tuple[str, int]]:
    """``(binding name, argument index)`` of each weight, in :func:`lift_weights`' order."""
    weights, _ = lift_weights(func, set())
    places = []
    for binding in (b for block in func.body.blocks for b in block.bindings):
        if isinstance(binding.value, relax.Call):
            for j, arg in enumerate(binding.value.args):
                if _is_weight(arg):
                    places.append((binding.var.name, j))
    assert len(places) == len(weights), "weight places out of step with lift_weights"
    return places


def _is_weight(expr) -> bool:
    # The same test as lift_weights: a float constant of more than one element.
    return (isinstance(expr, tvm.ir.GenericConst) and str(expr.value.dtype).startswith("float")
            and len(expr.value.shape) >= 1 and int(np.prod(expr.value.shape)) > 1)


def _names_bound_twice(func: relax.Function) -> set[str]:
    counts = Counter(b.var.name for block in func.body.blocks for b in block.bindings)
    return {name for name, n in counts.items() if n > 1}


def recovered_weights(mod: tvm.IRModule) -> dict[tuple[str, int], np.ndarray]:
    """Each weight of ``mod``'s ``main`` by its place (binding name, argument index); names bound
    twice are left out (their place is ambiguous)."""
    func = mod["main"]
    weights, _ = lift_weights(func, set())
    twice = _names_bound_twice(func)
    return {place: value for place, (value, _) in zip(_weight_places(func), weights) if place[0] not in twice}


def with_recovered_weights(mod: tvm.IRModule, recovered: dict[tuple[str, int], np.ndarray],
                           skip: set[str] = frozenset()) -> tuple[tvm.IRModule, int]:
    """``mod`` with each weight that has a recovered value in the same place (same shape and
    dtype, binding not in ``skip``) replaced by it; returns the module and how many were."""
    func = mod["main"]
    weights, emit = lift_weights(func, set())
    twice = _names_bound_twice(func)
    values, carried = [], 0
    for place, (value, _) in zip(_weight_places(func), weights):
        new = recovered.get(place)
        if new is not None and place[0] not in skip and place[0] not in twice \
                and new.shape == value.shape and new.dtype == value.dtype:
            values.append(new)
            carried += 1
        else:
            values.append(value)
    functions = {gv: (_rebuilt_main(func, values, emit) if gv.name_hint == "main" else f) for gv, f in mod.functions.items()}
    return tvm.IRModule(functions, attrs=mod.attrs), carried
