"""RefitClassifier: relearn the final fully connected layer against the original network's logits.

Every relearned merge leaves a small error, and the layers between merge sites pass it upwards;
the classifier then reads features that are slightly off. The classifier is linear, so the best
fix is closed-form: refit ``logits = f·W + b`` by (cross-validated ridge) least squares from the
*reborn* network's features to the *original* network's logits on the same calibration inputs
— no labels, the same hooks as every site. Nothing is merged; no op is added or removed.

Matches ``main``'s output when it is ``matmul(f, W) (+ b)`` with constant ``W`` (and ``b``), as
the ONNX importer writes ``Gemm``; anything else (a conv classifier like SqueezeNet's) is
refused with the reason.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from rebirth_tvm.core.conv_math import ConvGeometry
from rebirth_tvm.core.graph import FunctionGraph, op_name
from rebirth_tvm.relearn import driver
from rebirth_tvm.relearn.activations import activations
from rebirth_tvm.relearn.hooks import resolve_hook

from ._relearn import put_in
from ._sites import REFUSED, REWRITTEN, SiteRecord, publish


def _head(graph: FunctionGraph, out):
    """(output var, matmul call, features var, weight, bias or None) or a reason."""
    value = graph.producer(out)
    bias = None
    matmul = value
    if op_name(value) == "relax.add":
        lhs, rhs = value.args
        bias = graph.constant(rhs)
        matmul = graph.producer(lhs)
        if bias is None:
            return "the output is add(…, non-constant): not a classifier bias"
    if op_name(matmul) != "relax.matmul":
        return f"the output is not produced by a fully connected layer (matmul) but by {op_name(matmul) or type(matmul).__name__}"
    features, weight_expr = matmul.args
    weight = graph.constant(weight_expr)
    if weight is None or weight.ndim != 2:
        return "the classifier weight is not a constant 2-D matrix"
    if bias is not None and bias.size != weight.shape[1]:
        return f"the bias has {bias.size} values for {weight.shape[1]} outputs"
    return out, matmul, features, weight, bias


@tvm.transform.module_pass(opt_level=0, name="RefitClassifier")
class RefitClassifier:
    """Refit the final FC layer on reborn features → original logits (see the module docstring).

    Parameters
    ----------
    calibration: the inputs (N, C, H, W) the rest of the rebirth relearned from.
    reference: the module before rebirth; its logits on ``calibration`` are the targets.
    hook: the retraining hook (``"lstsq"`` or a callable); the FC is given to it as a 1×1 conv.
    """

    pass_name = "RefitClassifier"

    def __init__(self, calibration: np.ndarray, reference: tvm.IRModule, hook="lstsq"):
        self.calibration = np.asarray(calibration, np.float32)
        self.reference = reference
        self.hook = resolve_hook(hook)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        graph = FunctionGraph(mod["main"])
        out = mod["main"].body.body
        head = _head(graph, out) if isinstance(out, relax.Var) else "the output is not a single tensor"
        if isinstance(head, str):
            self.sites = [SiteRecord(self.pass_name, "classifier", REFUSED, head, exact=False)]
            publish(self.sites)
            return mod
        out, matmul, features_var, weight, bias = head
        features = activations(mod, features_var, self.calibration)
        reference_out = self.reference["main"].body.body
        targets = activations(self.reference, reference_out, self.calibration)
        n, d = features.shape[0], int(np.prod(features.shape[1:]))
        classes = weight.shape[1]
        x = features.reshape(n, d, 1, 1)
        t = targets.reshape(n, classes, 1, 1)
        init_w = weight.T.reshape(classes, d, 1, 1).astype(np.float64)
        init_b = np.zeros(classes) if bias is None else bias.reshape(-1).astype(np.float64)
        # The FC is a 1×1 conv on the flattened features: the same driver, hook and rules as every site.
        result = driver.fit(self.hook, "classifier", ConvGeometry(d, classes, (1, 1)), init_w, init_b, x, t, relu=False)
        name = out.name
        if result.kept_initial:  # the driver's "never worse": the original FC stays
            self.sites = [SiteRecord(self.pass_name, name, REFUSED,
                                     f"refitting would not bring the logits closer (held-out relative MSE {result.before['rel_mse']:.3g} → "
                                     f"{result.detail['fidelity_hook']['rel_mse']:.3g} refitted): left as it was", exact=False, detail=result.detail)]
            publish(self.sites)
            return mod
        new_w, new_b = result.weight, result.bias
        dtype = str(weight.dtype)

        def build(em):
            product = relax.op.matmul(em.remap(features_var), relax.const(new_w.reshape(classes, d).T.astype(dtype)))
            return relax.op.add(em.emit(product, name + "_refit"), relax.const(new_b.astype(dtype)))

        mod, new_bindings = put_in(mod, out, build)
        self.sites = [SiteRecord(self.pass_name, name, REWRITTEN,
                                 f"final FC refitted to the original logits: held-out relative MSE {result.before['rel_mse']:.3g} → "
                                 f"{result.after['rel_mse']:.3g}",
                                 exact=False, detail={"pattern": "fc (refit)", "kernel": [1, 1], "stride": [1, 1],
                                                      "macs_before": d * classes, "macs_after": d * classes,
                                                      "new_bindings": new_bindings, **result.detail})]
        publish(self.sites)
        return mod

