"""Property-based: random conv / BN / affine / sibling configurations stay exact.

Each example builds a small module, rewrites it with the exact pipeline and compares against the
same module without our passes (Relax, no rewrite) at a relative error of 1e-5.
Compiles dominate the cost, so each example checks a whole pipeline at once.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relax_builders import batch_norm, bn_stats, conv, count_ops, module, rel_err, run
from tvm import relax

from rebirth_tvm.passes import exact_pipeline

TOL = 1e-5


@st.composite
def conv_configs(draw):
    in_ch = draw(st.sampled_from([2, 4, 6]))
    groups = draw(st.sampled_from([1, 2, in_ch]))
    out_ch = draw(st.sampled_from([groups, 2 * groups, 3 * groups])) if groups > 1 else draw(st.integers(1, 8))
    k = draw(st.integers(1, 7))
    pad = tuple(draw(st.integers(0, k - 1)) for _ in range(4)) if k > 1 else (0, 0, 0, 0)
    size = draw(st.integers(max(k, 3), 11))
    return dict(
        in_ch=in_ch, out_ch=out_ch, groups=groups, k=k, pad=pad, stride=draw(st.integers(1, 2)),
        size=size, bias=draw(st.booleans()), tail=draw(st.sampled_from(["bn", "affine", "bn+affine", "none"])),
        siblings=draw(st.integers(0, 2)), sibling_k=draw(st.sampled_from([1, k])), seed=draw(st.integers(0, 2**16)),
    )


def build(cfg):
    r = np.random.default_rng(cfg["seed"])
    shape = (1, cfg["in_ch"], cfg["size"], cfg["size"])
    g, k = cfg["groups"], cfg["k"]
    w = (r.standard_normal((cfg["out_ch"], cfg["in_ch"] // g, k, k)) / np.sqrt(k * k * cfg["in_ch"] / g)).astype("float32")

    def body(bb, x):
        y = bb.emit(conv(x, relax.const(w), stride=cfg["stride"], pad=cfg["pad"], groups=g))
        if cfg["bias"]:
            y = bb.emit(relax.op.add(y, relax.const(r.normal(0, 0.1, (1, cfg["out_ch"], 1, 1)).astype("float32"))))
        if "bn" in cfg["tail"]:
            y = bb.emit(relax.TupleGetItem(bb.emit(batch_norm(y, bn_stats(r, cfg["out_ch"]))), 0))
        if "affine" in cfg["tail"]:
            y = bb.emit(relax.op.multiply(y, relax.const(r.uniform(0.5, 1.5, (1, cfg["out_ch"], 1, 1)).astype("float32"))))
            y = bb.emit(relax.op.add(y, relax.const(r.normal(0, 1, (cfg["out_ch"], 1, 1)).astype("float32"))))
        outs = [y]
        for _ in range(cfg["siblings"]):
            # Same stride/groups/padding, maybe a different kernel: the merge must pad or refuse.
            sk = cfg["sibling_k"]
            ws = (r.standard_normal((cfg["out_ch"], cfg["in_ch"] // g, sk, sk)) / np.sqrt(sk * sk * cfg["in_ch"] / g)).astype("float32")
            pad = cfg["pad"] if sk == k else tuple(max(0, p - (k - sk) // 2) for p in cfg["pad"])
            outs.append(bb.emit(conv(x, relax.const(ws), stride=cfg["stride"], pad=pad, groups=g)))
        return relax.Tuple(outs) if len(outs) > 1 else outs[0]

    return module(shape, body), shape


@pytest.mark.slow
@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(conv_configs())
def test_exact_pipeline_matches_unrewritten_module(cfg):
    before, shape = build(cfg)
    after = exact_pipeline(allow_kernel_padding=True)(before)
    if "bn" in cfg["tail"]:
        assert count_ops(after, "relax.nn.batch_norm") == 0
    x = np.random.default_rng(cfg["seed"] + 1).standard_normal(shape).astype("float32")
    outs, refs = run(after, x), run(before, x)
    outs = outs if isinstance(outs, list) else [outs]
    refs = refs if isinstance(refs, list) else [refs]
    assert len(outs) == len(refs)  # zip would silently drop a missing output
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        assert rel_err(out, ref) <= TOL
