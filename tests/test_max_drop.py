"""``--max-drop POINTS``: the sites kept are the most whose rebirth stays within the budget of
top-1 agreement with the original on the held-out calibration images; the rest are put back."""

import numpy as np
import onnx
import pytest
from onnx_builders import stem, with_classifier

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.pipeline import RebirthOptions, compile_model


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    # GoogLeNet's stem (conv → pool → LRN → conv → LRN → pool) under a 50-class FC: relearning its
    # merges moves one of the 20 held-out predictions (measured), so a budget has work to do.
    path = tmp_path_factory.mktemp("max_drop") / "stem_classifier.onnx"
    onnx.save(with_classifier(stem(), classes=50), path)
    return str(path)


CALIB = np.random.default_rng(0).standard_normal((100, 3, 32, 32)).astype(np.float32)


def test_a_zero_budget_puts_back_sites_until_the_held_out_predictions_agree(classifier):
    result = compile_model(classifier, rebirth=RebirthOptions(calib=CALIB, max_drop=0.0))
    selection = result.report["fidelity"]["max_drop"]
    assert selection["drop_all_sites_points"] > 0, selection  # otherwise this test proves nothing
    assert selection["put_back"] and selection["final_drop_points"] <= 0.0, selection
    assert result.report["fidelity"]["top1_agreement"] == 1.0
    put_back = {s["site"]: s for s in result.report["sites"] if s["site"] in selection["put_back"]}
    assert put_back and all(s["status"] == "refused" and "put back by --max-drop 0" in s["reason"] for s in put_back.values())
    assert set(put_back) == set(selection["put_back"])  # every site put back has its line in the report
    assert_kept_sites_were_measured_within_the_budget(selection)


def assert_kept_sites_were_measured_within_the_budget(selection):
    """What is kept was one trial, measured within the budget (or nothing relearned is kept:
    the exact network)."""
    budget = selection["budget_points"]
    if selection["kept"]:
        chosen = [t for t in selection["trials"] if sorted(t["relearned"]) == sorted(selection["kept"]) and t["drop_points"] <= budget]
        assert chosen and selection["final_drop_points"] == chosen[-1]["drop_points"], selection
    else:
        assert selection["final_drop_points"] == 0.0, selection


def test_a_budget_the_sites_already_meet_puts_nothing_back(classifier):
    result = compile_model(classifier, rebirth=RebirthOptions(calib=CALIB, max_drop=100.0))
    selection = result.report["fidelity"]["max_drop"]
    assert selection["put_back"] == [] and len(selection["trials"]) == 1 and selection["kept"]


@pytest.mark.parametrize("value", [-1.0, 101.0])
def test_a_budget_outside_0_to_100_is_refused(value):
    with pytest.raises(RebirthError, match="--max-drop POINTS must be between 0 and 100"):
        RebirthOptions(calib=CALIB, max_drop=value)


def test_max_drop_without_rebirth_is_one_line(tmp_path, cli):
    proc = cli("--model", "fashion_googlenet", "--max-drop", "1", "--out", str(tmp_path / "o"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--max-drop only apply with --rebirth" in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_chain_site_is_measured_with_its_base_and_nothing_kept_is_not_distilled(classifier):
    from rebirth_tvm.relearn.distill import DistillOptions

    result = compile_model(classifier, rebirth=RebirthOptions(calib=CALIB, max_drop=0.0, distill=DistillOptions(epochs=2, batch=8)))
    fidelity = result.report["fidelity"]
    selection = fidelity["max_drop"]
    assert selection["drop_all_sites_points"] > 0, selection  # the budget has work to do
    # The stem's LRN merges into the conv the pool merge made: alone it would not be relearned
    # at all (and would look free), so it is measured with that merge.
    assert selection["builds_on"]["norm1"] == "pool1"
    only_norm1 = next(t for t in selection["trials"] if t["trial"] == "only norm1 (with pool1)")
    assert only_norm1["sites"] == 2
    norm1 = next(s for s in result.report["sites"] if s["site"] == "norm1")
    assert "with pool1, which it builds on, it cost" in norm1["reason"], norm1
    assert_kept_sites_were_measured_within_the_budget(selection)
    # Every site alone costs a held-out image here: nothing relearned is kept, and the network
    # stays the exact one, not distilled.
    assert selection["kept"] == [] and "distill" not in fidelity and fidelity["top1_agreement"] == 1.0


def spoiled(name: str):
    """Least squares, except that ``name``'s fit comes out negated: a site that costs the task a
    lot while the others cost little, so a budget keeps some sites and puts one back."""
    from rebirth_tvm.relearn.hooks import LeastSquaresHook

    fit = LeastSquaresHook()

    def hook(site):
        weight, bias = fit(site)
        return (-weight, -np.asarray(bias)) if site.name == name else (weight, bias)

    return hook


def test_a_budget_keeps_the_cheap_sites_and_puts_back_the_costly_one(tmp_path):
    path = tmp_path / "stem_classifier.onnx"
    onnx.save(with_classifier(stem(), classes=10, seed=3), path)
    result = compile_model(str(path), rebirth=RebirthOptions(calib=CALIB, max_drop=10.0, hook=spoiled("pool2")))
    selection = result.report["fidelity"]["max_drop"]
    assert selection["drop_all_sites_points"] > 10.0, selection
    # pool2 builds on norm2, which builds on conv2: measured with both, it costs the most.
    assert selection["builds_on"]["pool2"] == "norm2" and selection["put_back"] == ["pool2"], selection
    assert sorted(selection["kept"]) == ["conv2", "norm1", "norm2", "pool1"]
    assert selection["final_drop_points"] <= 10.0
    assert_kept_sites_were_measured_within_the_budget(selection)
    pool2 = next(s for s in result.report["sites"] if s["site"] == "pool2")
    assert pool2["status"] == "refused" and "with norm2, which it builds on, it cost" in pool2["reason"]


def test_a_decomposition_of_a_merged_conv_is_a_chain_of_that_merge():
    from rebirth_tvm.passes import REWRITTEN, SiteRecord
    from rebirth_tvm.pipeline.stages import _chains

    merge = SiteRecord("Rebirth", "n5_LRN", REWRITTEN, "", exact=False, detail={"new_bindings": ["n5_LRN_conv", "n5_LRN_bias"]})
    lrn = SiteRecord("Rebirth", "n6_LRN", REWRITTEN, "", exact=False, detail={"builds_on": "n5_LRN", "new_bindings": ["n6_LRN_conv"]})
    tucker = SiteRecord("TuckerDecompose", "n5_LRN_bias", REWRITTEN, "", exact=False, detail={"new_bindings": ["x"]})
    same_name = SiteRecord("TuckerDecompose", "n6_LRN", REWRITTEN, "", exact=False, detail={"new_bindings": ["y"]})
    assert _chains([merge, lrn, tucker, same_name]) == {"n6_LRN": "n5_LRN", "n5_LRN_bias": "n5_LRN"}
