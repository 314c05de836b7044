"""End-to-end distillation without labels: gradients checked by finite differences, training
that gets closer to the teacher on held-out inputs, and never ends worse than it started."""

import numpy as np
import pytest
import tvm
from test_finetune import small_classifier
from tvm import relax

from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.relearn.distill import (DistillOptions, _training_module, augment, classifier_input, distill, distillation_loss,
                                         feature_loss, module_boundaries, softmax, tapped, with_features)
from rebirth_tvm.relearn.finetune import _rebuilt_main, _register_missing_gradients, lift_weights


def perturbed(mod, binding: str, scale: float, seed: int):
    """``mod`` with noise (``scale`` × the weights' spread) added to ``binding``'s weight: a
    student that starts away from its teacher. Returns the module and the binding's name."""
    func = mod["main"]
    weights, emit = lift_weights(func, {binding})
    r = np.random.default_rng(seed)
    values = [w + (scale * w.std() * r.standard_normal(w.shape)).astype(w.dtype) if fast else w for w, fast in weights]
    return tvm.IRModule({"main": _rebuilt_main(func, values, emit)}), binding


def damaged_student(train_count=48, held_count=24, seed=4):
    """The small classifier as teacher, a student whose site conv has noise (0.6 × its spread)
    added, and seeded random train and held-out inputs: ``(teacher, student, site, train, held)``."""
    teacher_mod = small_classifier(dtype="float32")
    student_mod, damaged = perturbed(teacher_mod, "site_conv", scale=0.6, seed=3)
    r = np.random.default_rng(seed)
    train = r.standard_normal((train_count, 2, 6, 6)).astype(np.float32)
    held = r.standard_normal((held_count, 2, 6, 6)).astype(np.float32)
    return teacher_mod, student_mod, damaged, train, held


def tapped_values(mod, points, images) -> list[np.ndarray]:
    """The values of ``mod``'s ``points`` (variable names) on ``images``, one array per point."""
    vm = relax.VirtualMachine(tvm.compile(tapped(mod, points), target=tvm.target.Target("llvm")), tvm.cpu())
    outs = [vm["main"](tvm.runtime.tensor(images[i:i + 1])) for i in range(len(images))]
    return [np.concatenate([o[k + 1].numpy() for o in outs]) for k in range(len(points))]


def run_main(mod, images):
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target("llvm")), tvm.cpu())
    return np.concatenate([vm["main"](tvm.runtime.tensor(images[i:i + 1])).numpy() for i in range(len(images))])


def teacher_of(mod):
    """images → (logits, the classifier's input features) of ``mod``."""
    vm = relax.VirtualMachine(tvm.compile(with_features(mod), target=tvm.target.Target("llvm")), tvm.cpu())

    def run(images):
        outs = [vm["main"](tvm.runtime.tensor(images[i:i + 1])) for i in range(len(images))]
        return np.concatenate([o[0].numpy() for o in outs]), np.concatenate([o[1].numpy() for o in outs])

    return run


def test_the_objective_is_zero_only_when_the_logits_agree():
    r = np.random.default_rng(0)
    teacher = r.standard_normal((5, 4))
    assert distillation_loss(teacher, teacher, 4.0) == pytest.approx(0.0, abs=1e-12)
    assert distillation_loss(teacher + r.standard_normal((5, 4)), teacher, 4.0) > 1e-3
    assert distillation_loss(teacher + 3.0, teacher, 2.0) == pytest.approx(0.0, abs=1e-12)  # a shift changes no probability
    np.testing.assert_allclose(softmax(teacher, 2.0).sum(-1), 1.0)


def concat_name(mod) -> str:
    return next(b.var.name for block in mod["main"].body.blocks for b in block.bindings
                if isinstance(b.value, relax.Call) and b.value.op.name == "relax.concat")


def test_gradients_match_finite_differences():
    _register_missing_gradients()
    mod = small_classifier()  # float64, through the LRN, slices and concat
    weights, emit = lift_weights(mod["main"], set())
    features = classifier_input(mod["main"]).name
    # The logits, the classifier's input and a module boundary (the concat), each weighted.
    training = _training_module(mod["main"], weights, emit, temperature=3.0, points=[(features, 0.25), (concat_name(mod), 0.1)],
                                logit_weight=0.5)
    grad_mod = relax.transform.Gradient("loss", require_grads=list(training["loss"].params[4:]))(training)
    vm = relax.VirtualMachine(tvm.compile(grad_mod, target=tvm.target.Target("llvm")), tvm.cpu())
    r = np.random.default_rng(1)
    x = r.standard_normal((1, 2, 6, 6))
    targets = softmax(r.standard_normal((1, 4)), 3.0)
    target_features = r.standard_normal((1, 6))
    target_boundary = r.standard_normal((1, 6, 6, 6))
    values = [w.copy() for w, _ in weights]

    def tensors(vals):
        return [tvm.runtime.tensor(v) for v in vals]

    def loss(vals):
        return float(vm["loss"](tvm.runtime.tensor(x), tvm.runtime.tensor(targets), tvm.runtime.tensor(target_features),
                                tvm.runtime.tensor(target_boundary), *tensors(vals)).numpy())

    # The objective itself, against numpy: 0.5 × T² × soft cross-entropy + 0.25 × ‖f − f_t‖² + 0.1 × ‖m − m_t‖².
    logits, out_features, boundary = (o.numpy() for o in vm["logits"](tvm.runtime.tensor(x), *tensors(values)))
    expected = (-0.5 * 9.0 * np.sum(targets * np.log(softmax(logits, 3.0))) + 0.25 * feature_loss(out_features, target_features, 1.0)
                + 0.1 * feature_loss(boundary, target_boundary, 1.0))
    assert loss(values) == pytest.approx(expected, rel=1e-10)
    _, adjoints = vm["loss_adjoint"](tvm.runtime.tensor(x), tvm.runtime.tensor(targets), tvm.runtime.tensor(target_features),
                                     tvm.runtime.tensor(target_boundary), *tensors(values))
    for k, adjoint in enumerate(adjoints):
        flat = values[k].reshape(-1)
        for index in r.choice(flat.size, size=min(3, flat.size), replace=False):
            step = 1e-6
            up, down = [v.copy() for v in values], [v.copy() for v in values]
            up[k].reshape(-1)[index] += step
            down[k].reshape(-1)[index] -= step
            numeric = (loss(up) - loss(down)) / (2 * step)
            assert adjoint.numpy().reshape(-1)[index] == pytest.approx(numeric, rel=1e-4, abs=1e-8)


def test_distillation_brings_a_damaged_student_back_towards_the_teacher_without_labels():
    teacher_mod, student_mod, damaged, train, held = damaged_student()
    teacher = teacher_of(teacher_mod)
    options = DistillOptions(epochs=6, batch=8, lr=3e-3, seed=0, feature_weight=0.0, module_weight=0.0, warmup=0.0)  # the logits alone
    out, summary = distill(student_mod, teacher_mod, train, held, {damaged}, options)
    before, after = summary["before"]["objective"], summary["after"]["objective"]
    assert after < 0.7 * before, summary["history"]
    # Measured again from the returned module, on the held-out inputs: closer to the teacher
    # than the student was, and than a constant (the teacher's mean logits, whatever the input).
    teacher_held, _ = teacher(held)
    measured = distillation_loss(run_main(out, held), teacher_held, 4.0)
    assert measured == pytest.approx(after, rel=1e-3)
    constant = distillation_loss(np.broadcast_to(teacher_held.mean(0), teacher_held.shape), teacher_held, 4.0)
    assert measured < min(before, constant)
    assert summary["epochs_run"] >= 1 and summary["fast_tensors"] >= 3  # the site's conv and bias, the classifier


def diverging_distillation(epochs: int, warmup: float = 0.0):
    """A slightly damaged student distilled at a rate (50) that makes every epoch worse, with
    patience 1: ``(the returned module, summary, the student, the held-out inputs)``."""
    teacher_mod = small_classifier(dtype="float32")
    student_mod, damaged = perturbed(teacher_mod, "site_conv", scale=0.05, seed=3)
    r = np.random.default_rng(5)
    train, held = r.standard_normal((16, 2, 6, 6)).astype(np.float32), r.standard_normal((8, 2, 6, 6)).astype(np.float32)
    out, summary = distill(student_mod, teacher_mod, train, held, {damaged},
                           DistillOptions(epochs=epochs, batch=4, lr=50.0, rest_scale=1.0, patience=1, warmup=warmup))
    return out, summary, student_mod, held


def test_a_distillation_that_diverges_keeps_the_weights_it_started_from():
    out, summary, student_mod, held = diverging_distillation(epochs=2)
    assert summary["best_epoch"] == 0 and summary["after"] == {k: summary["before"][k] for k in ("objective", "agreement")}
    np.testing.assert_allclose(run_main(out, held), run_main(student_mod, held), rtol=1e-6)


def test_patience_counts_only_once_the_rate_has_decayed():
    # Diverging on every epoch, with patience 1: the epochs near the peak rate do not count
    # (the objective often rises there before it falls), so it stops at the first epoch that
    # ends with the rate at a fifth of its peak or below: the end of epoch 5 of 6 (epoch 4 ends at a quarter).
    _, summary, _, _ = diverging_distillation(epochs=6)
    assert summary["best_epoch"] == 0 and summary["epochs_run"] == 5


def test_epochs_in_the_warmup_do_not_count_towards_patience():
    # The rate is low in the warmup too, but rising: with half the steps warming up (12 epochs of
    # 4 steps), epoch 1 ends at a fifth of the peak; diverging with patience 1, it runs on until
    # the decay has brought the rate to a fifth again, the end of epoch 11.
    _, summary, _, _ = diverging_distillation(epochs=12, warmup=0.5)
    assert summary["best_epoch"] == 0 and summary["epochs_run"] == 11


def test_the_feature_term_pulls_the_features_to_the_teachers_too():
    teacher_mod, student_mod, damaged, train, held = damaged_student()
    teacher = teacher_of(teacher_mod)
    _, teacher_features = teacher(held)
    scale = float(np.mean(np.sum(teacher(train)[1] ** 2, -1)))
    _, before = teacher_of(student_mod)(held)
    distance = {}
    for weight in (0.0, 5.0):
        out, summary = distill(student_mod, teacher_mod, train, held, {damaged},
                               DistillOptions(epochs=6, batch=8, lr=3e-3, feature_weight=weight, module_weight=0.0, warmup=0.0))
        distance[weight] = feature_loss(teacher_of(out)(held)[1], teacher_features, scale)
        assert summary["after"]["objective"] < summary["before"]["objective"]
    assert distance[5.0] < min(distance[0.0], feature_loss(before, teacher_features, scale)), distance


def test_module_boundaries_are_the_shared_concats_and_relearned_outputs():
    teacher_mod = small_classifier(dtype="float32")
    student_mod, damaged = perturbed(teacher_mod, "site_conv", scale=0.6, seed=3)
    # The concat (an inception-style module's output) and the relearned conv's own output;
    # not the ReLU or the pool between them, nor the classifier's flat input (rank 2).
    assert module_boundaries(student_mod["main"], teacher_mod["main"], {damaged}) == [damaged, concat_name(teacher_mod)]
    # Only what the sites output: a relearned inner value that shares a name is not one.
    assert module_boundaries(student_mod["main"], teacher_mod["main"], set()) == [concat_name(teacher_mod)]


def test_the_module_term_pulls_the_module_boundaries_to_the_teachers():
    # Module reconstruction: each module's output matched with the student's own inputs from
    # below. With only the module term, the boundary gets closer than with the logits alone.
    teacher_mod, student_mod, damaged, train, held = damaged_student()
    boundary = concat_name(teacher_mod)

    def boundary_of(mod):
        return tapped_values(mod, [boundary], held)[0]

    target = boundary_of(teacher_mod)
    distance = {"before": feature_loss(boundary_of(student_mod), target, 1.0)}
    for name, options in {"logits": DistillOptions(epochs=6, batch=8, lr=3e-3, feature_weight=0.0, module_weight=0.0),
                          "modules": DistillOptions(epochs=6, batch=8, lr=3e-3, logit_weight=0.0, feature_weight=0.0,
                                                    module_weight=1.0)}.items():
        out, summary = distill(student_mod, teacher_mod, train, held, {damaged}, options, site_outputs={damaged})
        assert summary["after"]["objective"] < summary["before"]["objective"]
        distance[name] = feature_loss(boundary_of(out), target, 1.0)
    assert summary["module_boundaries"] == [damaged, boundary]
    assert distance["modules"] < min(distance["logits"], distance["before"]), distance


def test_each_module_boundary_is_weighted_module_weight_not_a_share_of_it():
    teacher_mod, student_mod, damaged, train, held = damaged_student()
    points = [damaged, concat_name(teacher_mod)]

    # Each boundary's squared error relative to the teacher's mean squared norm there, summed:
    # two boundaries at weight 2 count 2 each (a mean would make it 1 each).
    relative = [feature_loss(s, t, float(np.mean(np.sum(t.reshape(len(t), -1).astype(np.float64) ** 2, -1))))
                for s, t in zip(tapped_values(student_mod, points, held), tapped_values(teacher_mod, points, held))]
    assert min(relative) > 0
    _, summary = distill(student_mod, teacher_mod, train, held, {damaged},
                         DistillOptions(epochs=1, batch=8, logit_weight=0.0, feature_weight=0.0, module_weight=2.0),
                         site_outputs={damaged})
    assert summary["module_boundaries"] == points and summary["module_term"] == "each"
    assert summary["before"]["objective"] == pytest.approx(2.0 * sum(relative), rel=1e-4)


def test_distillation_with_the_projects_kernels_matches_the_plain_build():
    from rebirth_tvm.backend.build import compile_for_host

    teacher_mod, student_mod, damaged, train, held = damaged_student(16, 8)
    options = DistillOptions(epochs=2, batch=4, lr=3e-3, augment=False, module_weight=1.0)
    _, plain = distill(student_mod, teacher_mod, train, held, {damaged}, options, site_outputs={damaged})
    _, ours = distill(student_mod, teacher_mod, train, held, {damaged}, options, compiler=compile_for_host, site_outputs={damaged})
    for a, b in zip(plain["history"], ours["history"]):
        assert a["objective"] == pytest.approx(b["objective"], rel=1e-3)


def test_augmentation_flips_and_shifts_but_keeps_the_shape():
    images = np.arange(2 * 1 * 12 * 12, dtype=np.float32).reshape(2, 1, 12, 12)
    out = augment(images, np.random.default_rng(0))
    assert out.shape == images.shape and not np.array_equal(out, images)
    # Nothing is invented: every value is an input value or the zero fill.
    assert set(np.unique(out)) <= set(np.unique(images)) | {0.0}


def test_mixup_blends_pairs_of_images_and_keeps_the_rest():
    images = np.stack([np.full((1, 12, 12), v, np.float32) for v in (1.0, 2.0, 4.0, 8.0)])
    none = augment(images, np.random.default_rng(0), mixup=0.0)
    every = augment(images, np.random.default_rng(0), mixup=1.0)
    # With no shift or flip in the way (constant images), a blend is a value between two inputs.
    centre = every[:, 0, 6, 6]
    assert set(none[:, 0, 6, 6]) <= {1.0, 2.0, 4.0, 8.0}
    assert not set(centre) <= {1.0, 2.0, 4.0, 8.0} and 1.0 <= centre.min() and centre.max() <= 8.0


def test_cutmix_pastes_a_rectangle_of_another_image_and_keeps_the_rest():
    images = np.stack([np.full((1, 12, 12), v, np.float32) for v in (1.0, 2.0, 4.0, 8.0)])
    every = augment(images, np.random.default_rng(3), cutmix=1.0)
    values = {1.0, 2.0, 4.0, 8.0, 0.0}  # the inputs and the shift's zero fill: nothing is blended
    assert set(np.unique(every)) <= values
    pasted = 0
    for image, original in zip(every[:, 0], (1.0, 2.0, 4.0, 8.0)):
        # Away from the shifted-in border, what differs from the image's own value is one rectangle.
        inner = image[1:-1, 1:-1]
        other = np.argwhere((inner != original) & (inner != 0.0))
        if len(other):
            pasted += 1
            (y0, x0), (y1, x1) = other.min(0), other.max(0)
            box = inner[y0:y1 + 1, x0:x1 + 1]
            assert len(np.unique(box[box != 0.0])) == 1 and np.unique(box[box != 0.0])[0] != original
    assert pasted >= 2
    # Pasted after mixup, from the unblended images: with both on every image, the pasted pixels
    # are input values exactly while the rest are blends.
    both = augment(images, np.random.default_rng(3), mixup=1.0, cutmix=1.0)
    exact = np.isin(both[:, 0, 1:-1, 1:-1], [1.0, 2.0, 4.0, 8.0])
    assert exact.any() and not exact.all()


def test_the_rate_warms_up_then_decays():
    from rebirth_tvm.relearn.distill import _schedule

    scales = [_schedule(step, 100, 0.1) for step in range(100)]
    assert scales[0] < scales[5] < scales[9] <= 1.0 and max(scales) == pytest.approx(1.0, abs=0.01)
    assert all(a >= b for a, b in zip(scales[10:], scales[11:])) and scales[-1] < 0.01
    assert _schedule(0, 100, 0.0) == 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "--distill-epochs must be 1 or more"),
    (dict(temperature=0), "temperature must be above 0"),
    (dict(lr=-1), "lr must be above 0"),
    (dict(patience=0), "patience must be 1 or more"),
    (dict(feature_weight=-1), "feature_weight must be 0 or more"),
    (dict(module_weight=-0.5), "module_weight must be 0 or more"),
    (dict(logit_weight=0, feature_weight=0, module_weight=0), "needs something to match"),
    (dict(warmup=1.0), "warmup is a fraction of the steps"),
    (dict(mixup=1.5), "mixup is a share of the images"),
    (dict(cutmix=-0.1), "cutmix is a share of the images"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(RebirthError, match=message):
        DistillOptions(**kwargs)


def test_distillation_refuses_too_few_inputs_and_nothing_to_match():
    mod = small_classifier(dtype="float32")
    images = np.zeros((4, 2, 6, 6), np.float32)
    with pytest.raises(RebirthError, match="at least 1 training and held-out"):
        distill(mod, mod, np.zeros((0, 2, 6, 6), np.float32), np.zeros((2, 2, 6, 6), np.float32), set())
    # Only the module term asked for, and no boundary to match (no concat, no site output):
    # an objective of zero would train nothing for `patience` epochs.
    x = relax.Var("x", relax.TensorType((1, 2, 6, 6), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(np.ones((3, 2, 1, 1), np.float32)))))
            flat = bb.emit(relax.op.reshape(relax.op.mean(conv, axis=[2, 3]), (1, 3)))
            out = bb.emit_output(relax.op.matmul(flat, relax.const(np.ones((3, 4), np.float32))))
        bb.emit_func_output(out)
    plain = bb.get()
    with pytest.raises(RebirthError, match="nothing to match"):
        distill(plain, plain, images, images, set(), DistillOptions(logit_weight=0.0, feature_weight=0.0, module_weight=1.0))


@pytest.mark.parametrize("args, message", [
    (["--rebirth", "--calib", "random", "--distill", "--distill-epochs", "0"], "--distill-epochs must be 1 or more"),
    (["--rebirth", "--calib", "random", "--distill-epochs", "3"], "--distill-epochs only applies with --distill"),
    (["--distill"], "--distill only apply with --rebirth"),
])
def test_bad_distill_flags_are_one_line_errors_and_write_nothing(tmp_path, cli, args, message):
    proc = cli("--model", "fashion_googlenet", *args, "--out", str(tmp_path / "o"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()


def test_the_pipeline_distils_a_reborn_network_and_reports_it(tmp_path):
    # The whole path on a small inception network: relearned merges, then distillation from
    # the original on the calibration images; the report holds its before/after.
    import onnx
    from onnx_builders import inception, with_classifier

    from rebirth_tvm.pipeline import RebirthOptions, compile_model

    model = with_classifier(inception(pooled=False))
    path = tmp_path / "inception.onnx"
    onnx.save(model, path)
    calib = np.random.default_rng(0).standard_normal((30, 3, 16, 16)).astype(np.float32)
    result = compile_model(str(path), rebirth=RebirthOptions(calib=calib, distill=DistillOptions(epochs=2, batch=8)))
    summary = result.report["fidelity"]["distill"]
    assert summary["epochs_run"] >= 1 and summary["after"]["objective"] <= summary["before"]["objective"]
    assert summary["images"] == 24 and summary["held_out"] == 6


def test_a_model_without_class_logits_is_refused_in_one_line():
    x = relax.Var("x", relax.TensorType((1, 2, 6, 6), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, relax.const(np.ones((3, 2, 1, 1), np.float32))))
        bb.emit_func_output(out)
    images = np.zeros((4, 2, 6, 6), np.float32)
    with pytest.raises(RebirthError, match=r"distillation matches class logits; this model's output is \(1, 3, 6, 6\)"):
        distill(bb.get(), bb.get(), images, images, set())


def test_a_batched_step_is_the_sum_of_the_one_input_steps():
    # Distillation runs a step's inputs in one call of a module rebuilt for that many inputs:
    # its loss and gradients must be the sums of the model's own one-input ones.
    _register_missing_gradients()
    mod = small_classifier()  # float64: the sums compare tightly
    func = mod["main"]
    weights, emit = lift_weights(func, set())
    features, boundary = classifier_input(func).name, concat_name(mod)
    points = [(features, 0.25), (boundary, 0.1)]

    def gradients(batch):
        training = _training_module(func, weights, emit, temperature=3.0, points=points, batch=batch)
        grad = relax.transform.Gradient("loss", require_grads=list(training["loss"].params[4:]))(training)
        return relax.VirtualMachine(tvm.compile(grad, target=tvm.target.Target("llvm")), tvm.cpu())["loss_adjoint"]

    r = np.random.default_rng(2)
    x = r.standard_normal((4, 2, 6, 6))
    soft = softmax(r.standard_normal((4, 4)), 3.0)
    target_features, target_boundary = r.standard_normal((4, 6)), r.standard_normal((4, 6, 6, 6))
    tensors = [tvm.runtime.tensor(w) for w, _ in weights]
    together = gradients(4)(*(tvm.runtime.tensor(a) for a in (x, soft, target_features, target_boundary)), *tensors)
    one = gradients(None)
    apart = [one(*(tvm.runtime.tensor(a[i:i + 1]) for a in (x, soft, target_features, target_boundary)), *tensors) for i in range(4)]
    assert float(together[0].numpy()) == pytest.approx(sum(float(o[0].numpy()) for o in apart), rel=1e-10)
    for k, adjoint in enumerate(together[1]):
        np.testing.assert_allclose(adjoint.numpy(), sum(o[1][k].numpy() for o in apart), rtol=1e-9, atol=1e-12)


def test_distillation_runs_a_whole_step_per_call():
    teacher_mod, student_mod, damaged, train, held = damaged_student()
    options = DistillOptions(epochs=2, batch=8, lr=3e-3, feature_weight=0.0, module_weight=0.0, warmup=0.0)
    _, summary = distill(student_mod, teacher_mod, train, held, {damaged}, options)
    assert summary["inputs_per_call"] == 8 and summary["after"]["objective"] < summary["before"]["objective"]


def test_a_model_that_cannot_take_more_inputs_per_call_is_distilled_one_at_a_time():
    # Its reshape folds the channels into the leading dimension: rebuilt for 8 inputs it no
    # longer builds, so distillation says so and runs one input per call, as the model does.
    def model(scale):
        x = relax.Var("x", relax.TensorType((1, 2, 6, 6), "float32"))
        bb = relax.BlockBuilder()
        with bb.function("main", [x]):
            with bb.dataflow():
                conv = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(scale * np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2, 1, 1)))))
                rows = bb.emit(relax.op.reshape(conv, (3, 36)))
                pooled = bb.emit(relax.op.reshape(relax.op.mean(rows, axis=[1]), (1, 3)))
                out = bb.emit_output(relax.op.matmul(pooled, relax.const(np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4))))
            bb.emit_func_output(out)
        return bb.get()

    r = np.random.default_rng(0)
    train, held = r.standard_normal((16, 2, 6, 6)).astype(np.float32), r.standard_normal((8, 2, 6, 6)).astype(np.float32)
    said = []
    _, summary = distill(model(0.7), model(1.0), train, held, set(), DistillOptions(epochs=1, batch=8, feature_weight=0.0, module_weight=0.0),
                         log=said.append)
    assert summary["inputs_per_call"] == 1
    assert any("8 inputs per call" in line and "one input per call" in line for line in said), said
