"""Accuracy on real labelled images: the reborn Fashion-MNIST teacher against the teacher.

The fast version of benchmarks/results/accuracy.json (`python -m rebirth_tvm.accuracy`): 300
unlabelled training images, the least-squares hook, the per-site error limit 0.2 and the
classifier refit (the guarded configuration the README recommends), the first 500 test images.
Bound: the reborn model's top-1 within BOUND_POINTS of the teacher's on those 500 images and at
least MIN_AGREEMENT agreement with it. The bound is what this configuration reaches, with a
margin, not the issue's 1-point goal: accuracy.json has the full-size numbers.
"""

import json

import pytest

from rebirth_tvm.accuracy import Variant, default_grid, markdown, parse_variant, plot
from rebirth_tvm.core.errors import RebirthError

TEST_IMAGES, CALIB_IMAGES, BOUND_POINTS, MIN_AGREEMENT = 500, 300, 6.0, 0.90


@pytest.mark.slow
def test_reborn_teacher_stays_within_bound_of_the_teacher(tmp_path, cli):
    out = tmp_path / "fashion"
    proc = cli("--model", "fashion_googlenet", "--rebirth",
               "--calib", "fashion-mnist", "--calib-count", str(CALIB_IMAGES), "--max-site-error", "0.2", "--refit-classifier",
               "--evaluate", f"fashion-mnist:{TEST_IMAGES}",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    evaluation = report["evaluation"]
    assert evaluation["images"] == TEST_IMAGES
    assert evaluation["top1_before"] >= 0.88  # the trained teacher, on real labels
    assert evaluation["top1_after"] >= evaluation["top1_before"] - BOUND_POINTS / 100, evaluation
    assert evaluation["agreement"] >= MIN_AGREEMENT
    assert evaluation["latency_ms_before"]["median"] > 0 and evaluation["latency_ms_after"]["median"] > 0
    relearned = [s for s in report["sites"] if s["status"] == "rewritten" and not s["exact"]]
    limited = [s for s in report["sites"] if "stays above the limit" in s["reason"]]
    assert len(relearned) >= 5 and all(s["detail"]["fidelity"]["rel_mse"] <= 0.2 for s in relearned if s["pass_name"] == "Rebirth")
    assert all(s["status"] == "refused" and s["detail"]["fidelity"]["rel_mse"] > 0.2 for s in limited)
    assert "Fashion-MNIST training images (labels unused)" in report["fidelity"]["calibration"]
    assert "accuracy on 500 fashion-mnist test split images: top-1" in proc.stdout and "speed:" in proc.stdout


def test_evaluate_refuses_what_it_cannot_run(tmp_path, cli):
    for args, message in [(["--evaluate", "imagenet"], "known labelled datasets: fashion-mnist"),
                          (["--evaluate", "fashion-mnist:0"], "N must be a positive number"),
                          (["--model", "squeezenet1_1", "--evaluate", "fashion-mnist"], "gives 1x28x28 images; the model takes 3x224x224"),
                          (["--target", "arm", "--evaluate", "fashion-mnist"], "aarch64 builds cannot run here"),
                          (["--tucker", "0.9", "--refit-classifier"], "--tucker, --refit-classifier only apply with --rebirth")]:
        model = [] if "--model" in args else ["--model", "fashion_googlenet"]
        proc = cli(*model, *args, "--out", str(tmp_path / "o"))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], proc.stderr
        assert not (tmp_path / "o").exists()


def test_experiment_grid_and_variant_names():
    grid = default_grid(("lstsq", "sgd"), (100, 1000, 10000), finetune=True, tucker=0.9)
    names = [v.name for v in grid]
    assert names == ["both/lstsq/1000", "streamline/lstsq/1000", "branch/lstsq/1000", "both/sgd/1000", "both/lstsq/100",
                     "both/lstsq/10000", "both/lstsq/1000+finetune", "both/lstsq/1000+tucker0.9"]
    assert parse_variant("branch/sgd/1000+finetune") == Variant("branch", "sgd", 1000, True)
    assert parse_variant("both/lstsq/1000+tucker0.8") == Variant("both", "lstsq", 1000, False, 0.8)
    assert parse_variant("both/lstsq/1000+max0.2+refit+finetune0.001") == Variant("both", "lstsq", 1000, True, None, 0.2, True, 0.001)
    assert parse_variant("both/lstsq/1000+max0.2+refit+finetune0.001").name == "both/lstsq/1000+finetune0.001+max0.2+refit"
    assert parse_variant("both/lstsq/1000+max0.2+refit+distill").distill == 20  # the CLI's default epochs
    assert parse_variant("both/lstsq-nohinge/1000+distill4") == Variant("both", "lstsq-nohinge", 1000, distill=4)
    assert parse_variant("both/lstsq/1000+distill4").name == "both/lstsq/1000+distill4"
    assert parse_variant("both/lstsq/1000+drop1+distill").name == "both/lstsq/1000+distill20+drop1"
    assert parse_variant("both/lstsq/1000+distill20+modules") == Variant("both", "lstsq", 1000, distill=20, modules=True)
    assert parse_variant("both/lstsq/1000+latency+distill20") == Variant("both", "lstsq", 1000, distill=20, latency=True)
    assert parse_variant("both/lstsq/1000+latency+distill20").name == "both/lstsq/1000+distill20+latency"
    assert parse_variant("both/lstsq/1000+modules+distill20").name == "both/lstsq/1000+distill20+modules"
    assert parse_variant("both/lstsq/1000+cover+distill20") == Variant("both", "lstsq", 1000, distill=20, cover=True)
    assert parse_variant("both/lstsq/1000+cover+distill20").name == "both/lstsq/1000+distill20+cover"
    with pytest.raises(RebirthError, match="ABLATION/HOOK/COUNT"):
        parse_variant("all/lstsq/10")
    with pytest.raises(RebirthError, match="ABLATION/HOOK/COUNT"):
        parse_variant("both/lstsq/1000+modules")  # module matching is part of distillation


def test_results_render_as_table_and_png(tmp_path):
    result = {"model": "fashion_googlenet", "test_images": 10000, "teacher_top1": 0.92, "exact_top1": 0.92, "exact_agreement": 1.0,
              "variants": [{"name": "both/lstsq/1000", "ablation": "both", "hook": "lstsq", "calib_images": 1000, "finetune": False, "tucker": None,
                            "reborn_top1": 0.915, "top1_change_points": -0.5, "agreement": 0.98, "relearned_sites": 20,
                            "refused_sites": 3, "seconds": 60.0, "speedup": 1.5},
                           {"name": "both/lstsq/1000+distill10", "ablation": "both", "hook": "lstsq", "calib_images": 1000, "finetune": False,
                            "tucker": None, "distill": 10, "distill_summary": {"epochs_run": 10, "best_epoch": 9, "lr": 0.003, "rest_scale": 1.0},
                            "reborn_top1": 0.917, "top1_change_points": -0.3, "agreement": 0.985, "relearned_sites": 20,
                            "refused_sites": 3, "seconds": 300.0, "speedup": 1.4},
                           {"name": "both/lstsq/1000+distill80+modules", "ablation": "both", "hook": "lstsq", "calib_images": 1000,
                            "finetune": False, "tucker": None, "distill": 80,
                            "distill_summary": {"epochs_run": 80, "best_epoch": 78, "lr": 0.003, "rest_scale": 1.0, "mixup": 0.5, "cutmix": 0.5,
                                                "module_boundaries": ["a", "b"], "module_weight": 1.0, "module_term": "each"},
                            "reborn_top1": 0.917, "top1_change_points": -0.3, "agreement": 0.985, "relearned_sites": 20,
                            "refused_sites": 3, "seconds": 300.0, "speedup": 1.4}]}
    text = markdown(result)
    assert "| both/lstsq/1000 | yes | yes | lstsq | 1,000 | — | no | no | no | no | 91.50% | -0.50 | 98.00% | 1.50x | 20 / 3 | 60 |" in text
    assert "| 10 epochs (best 9), rate 0.003, rest 1× |" in text
    assert "| 80 epochs (best 78), 2 module boundaries (weight 1 each), rate 0.003, rest 1×, mixup 0.5, cutmix 0.5 |" in text
    plot(result, str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_frontier_keeps_only_points_nothing_beats_on_both_axes():
    from rebirth_tvm.accuracy import frontier

    points = [(1.0, 93.0), (1.5, 92.0), (1.4, 91.0), (2.0, 88.0), (1.5, 92.0)]
    assert frontier(points) == [0, 1, 3, 4]  # (1.4, 91) is beaten by (1.5, 92); equal points both stay
