"""benchmarks/distill_settings.py: its settings are checked where they enter, its table reads
what was measured. (The study itself runs fashion_googlenet for minutes; it is not run here.)"""

import importlib.util
import os

import pytest

from rebirth_tvm.core.errors import RebirthError

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "distill_settings.py")
_spec = importlib.util.spec_from_file_location("distill_settings", _PATH)
distill_settings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(distill_settings)


def test_a_setting_names_distillation_options_with_their_types():
    assert distill_settings.parse_setting("epochs=40, lr=0.001,rest_scale=0.1,augment=no") == \
        {"epochs": 40, "lr": 0.001, "rest_scale": 0.1, "augment": False}
    assert distill_settings.parse_setting("augment=true") == {"augment": True}
    assert distill_settings.parse_setting("") == {}


@pytest.mark.parametrize("text, message", [
    ("speed=2", "NAME one of epochs"),
    ("lr=", "lr takes a number, not ''"),
    ("epochs=four", "epochs takes a whole number"),
    ("epochs=40.0", "epochs takes a whole number"),
    ("augment=maybe", "augment takes true or false"),
    ("lr=0.1,lr=0.2", "lr is given twice"),
    ("epochs=0", "--distill-epochs must be 1 or more"),
    ("rest_scale=2", "rest_scale in \\[0, 1\\]"),
])
def test_bad_settings_are_one_line_errors(text, message):
    with pytest.raises(RebirthError, match=message):
        distill_settings.parse_setting(text)


def test_the_table_shows_each_row_with_the_rates_and_weights_it_ran_at():
    # A row from before cutmix existed and the module weight was given to each boundary, and one after.
    old = {"setting": {"epochs": 80}, "options": {"lr": 0.003, "rest_scale": 1.0, "mixup": 0.0, "module_weight": 1.0}, "top1": 0.8833,
           "top1_change_points": -4.85, "agreement": 0.9102, "own_images_agreement": 0.975, "held_out_agreement": 0.925,
           "best_epoch": 71, "epochs_run": 76, "seconds": 331.6}
    new = dict(old, options={"lr": 0.003, "rest_scale": 0.1, "mixup": 0.5, "cutmix": 0.25, "module_weight": 2.0}, module_term="each",
               patience_from_rate=0.2)
    table = distill_settings.markdown([{"date": "2026-12-07", "calibration_images": 1000, "teacher_top1": 0.9318,
                                        "machine": "x86_64, 2 cores", "rows": [old, new]}])
    assert ("| 2026-12-07 | 1,000 | epochs=80 | 0.003, 1× | 0, 0 | 1 shared | 88.33% | -4.85 | 91.02% | 97.50% | 92.5% | 71 / 76 | 331.6 |"
            in table)
    assert "| epochs=80 | 0.003, 0.1× | 0.5, 0.25 | 2 each | 88.33% |" in table
    assert "| 92.5% | 71 / 76 (patience from 0.2) | 331.6 |" in table
    assert "- 2026-12-07: teacher top-1 93.18%, x86_64, 2 cores" in table
    # The notes on older rows only where such rows are.
    assert "*shared* among" in table and "patience: rows that do not say" in table and "`boundary`" not in table
    alone = distill_settings.markdown([{"date": "2026-12-08", "calibration_images": 1000, "teacher_top1": 0.9318,
                                        "machine": "x86_64, 2 cores", "rows": [new]}])
    assert "*shared* among" not in alone and "patience: rows" not in alone


def test_the_capture_is_undone_even_when_the_pipeline_fails():
    import rebirth_tvm.relearn.distill as distillation

    real = distillation.distill
    with pytest.raises(RuntimeError):
        with distill_settings.captured_distillation() as calls:
            assert distillation.distill is not real
            distillation.distill("mod", "teacher", "train", "held", set(), "options", compiler="c", site_outputs={"s"})
            raise RuntimeError("the pipeline failed")
    assert distillation.distill is real
    assert calls == [dict(mod="mod", teacher="teacher", train="train", held_out="held", regenerated=set(), compiler="c",
                          site_outputs={"s"})]


@pytest.mark.parametrize("content, message", [("{not json", "cannot read"), ("[1, 2]", "not a list of this script's results")])
def test_append_refuses_a_file_it_did_not_write_before_studying(tmp_path, content, message):
    (tmp_path / "distill_settings.json").write_text(content)
    with pytest.raises(RebirthError, match=message):
        distill_settings._earlier(str(tmp_path / "distill_settings.json"))
    assert distill_settings._earlier(str(tmp_path / "absent.json")) == []
