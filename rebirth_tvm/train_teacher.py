"""Train the Fashion-MNIST teacher and export it as ONNX: ``python -m rebirth_tvm.train_teacher``.

The teacher is a small GoogLeNet: it has every layer DeepRebirth merges, at Fashion-MNIST's
28×28 scale —

* stem: conv 3×3 → max pool 3×3/2 (ceil) → LRN → conv 1×1 → conv 3×3 → LRN (BVLC's stem, with
  one pool fewer: the input is 8× smaller than ImageNet's);
* inception 3a, 3b (14×14) → max pool 3×3/2 → inception 4a, 4b (7×7) → max pool 3×3/2 →
  inception 5a (4×4), each with 1×1, 1×1 → 3×3, 1×1 → 5×5 and 3×3 pool → 1×1 branches;
* global average pool → FC (10 classes).

Every conv is followed by batch norm (Inception v2's recipe, which is what lets a CPU train it
in minutes) and ReLU; the exported ONNX keeps BN as BatchNormalization, so the exact passes
have real statistics to fold. The LRNs are BVLC's (size 5, α 1e-4, β 0.75).

Training needs PyTorch (``pip install -e '.[train]'``); nothing else in rebirth-tvm does. The
committed ``rebirth_tvm/frontend/zoo/fashion_googlenet.onnx`` came from the default arguments:
tests, tutorials and the accuracy benchmark use that file and never retrain.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from rebirth_tvm.frontend.datasets import as_inputs, fashion_mnist
from rebirth_tvm.core.errors import RebirthError

#: Inception widths: (1×1, 3×3 reduce, 3×3, 5×5 reduce, 5×5, pool projection).
INCEPTION = {
    "inception_3a": (64, (16, 24, 32, 8, 16, 16)),
    "inception_3b": (80, (32, 32, 48, 8, 16, 16)),
    "inception_4a": (112, (48, 32, 64, 8, 16, 16)),
    "inception_4b": (144, (48, 32, 64, 12, 24, 24)),
    "inception_5a": (160, (64, 48, 96, 16, 32, 32)),
}
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frontend", "zoo", "fashion_googlenet.onnx")


def _torch():
    try:
        import torch
    except ImportError:
        raise RebirthError("training the teacher needs PyTorch: pip install -e '.[train]' (CPU build: pip install torch==2.13.0)") from None
    return torch


def make_teacher():
    torch = _torch()
    nn = torch.nn
    _LRN = _lrn_class()

    def conv(cin, cout, k, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class Inception(nn.Module):
        def __init__(self, cin, widths):
            super().__init__()
            c1, c3r, c3, c5r, c5, pp = widths
            self.b1 = conv(cin, c1, 1)
            self.b3 = nn.Sequential(conv(cin, c3r, 1), conv(c3r, c3, 3))
            self.b5 = nn.Sequential(conv(cin, c5r, 1), conv(c5r, c5, 5))
            self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(cin, pp, 1))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)

    def lrn():
        return _LRN(5, alpha=1e-4, beta=0.75, k=1.0)

    def pool():
        return nn.MaxPool2d(3, 2, ceil_mode=True)

    widths = {name: w for name, (_, w) in INCEPTION.items()}
    inputs = {name: c for name, (c, _) in INCEPTION.items()}
    out = sum(widths["inception_5a"][i] for i in (0, 2, 4, 5))
    return nn.Sequential(
        conv(1, 32, 3), pool(), lrn(),                          # 28 → 14
        conv(32, 32, 1), conv(32, 64, 3), lrn(),
        Inception(inputs["inception_3a"], widths["inception_3a"]),
        Inception(inputs["inception_3b"], widths["inception_3b"]), pool(),   # 14 → 7
        Inception(inputs["inception_4a"], widths["inception_4a"]),
        Inception(inputs["inception_4b"], widths["inception_4b"]), pool(),   # 7 → 4
        Inception(inputs["inception_5a"], widths["inception_5a"]),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(out, 10),
    )


def _lrn_class():
    """``nn.LocalResponseNorm`` that exports as one ONNX ``LRN`` node.

    PyTorch's exporter otherwise writes LRN as ~30 ops (pads, an If, average pools): a graph no
    one would recognise as LRN, which is not the model the paper's passes are about.
    """
    torch = _torch()

    class LRNFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, size, alpha, beta, k):
            return torch.nn.functional.local_response_norm(x, size, alpha, beta, k)

        @staticmethod
        def symbolic(g, x, size, alpha, beta, k):
            return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)

    class LRN(torch.nn.LocalResponseNorm):
        def forward(self, x):
            if torch.onnx.is_in_onnx_export():
                return LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)
            return super().forward(x)

    return LRN


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    torch = _torch()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            logits = model(torch.from_numpy(as_inputs(images[i:i + batch])))
            correct += int((logits.argmax(1).numpy() == labels[i:i + batch]).sum())
    return correct / len(images)


def train(epochs: int = 8, batch: int = 128, lr: float = 3e-3, seed: int = 0, log=print):
    """Adam with a one-cycle schedule, random flips and 2-pixel shifts; best on ``val`` wins."""
    torch = _torch()
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_x, train_y = fashion_mnist("train")
    val_x, val_y = fashion_mnist("val")
    model = make_teacher()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(train_x) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    best, best_state, history = -1.0, None, []
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(train_x))
        start = time.perf_counter()
        bar = tqdm(range(len(train_x) // batch), desc=f"epoch {epoch + 1}/{epochs}", disable=None, leave=False)
        for step in bar:
            idx = order[step * batch:(step + 1) * batch]
            x = as_inputs(_augment(train_x[idx], rng))
            loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(train_y[idx].astype(np.int64)))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        accuracy = evaluate(model, val_x, val_y)
        history.append({"epoch": epoch + 1, "val_top1": accuracy, "seconds": round(time.perf_counter() - start, 1)})
        log(f"epoch {epoch + 1}: val top-1 {accuracy:.4f} ({history[-1]['seconds']} s)")
        if accuracy > best:
            best, best_state = accuracy, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), history


def _augment(images: np.ndarray, rng) -> np.ndarray:
    """Random horizontal flips and shifts of up to 2 pixels (zero-filled), per image."""
    out = np.where(rng.random(len(images))[:, None, None] < 0.5, images[:, :, ::-1], images)
    padded = np.pad(out, ((0, 0), (2, 2), (2, 2)))
    dy, dx = rng.integers(0, 5, len(images)), rng.integers(0, 5, len(images))
    return np.stack([padded[i, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(len(images))])


def export_onnx(model, path: str) -> None:
    """ONNX opset 13, input ``data`` (1, 1, 28, 28), output ``logits``; BN kept as BatchNormalization."""
    torch = _torch()
    import onnx

    from rebirth_tvm.frontend.export_onnx import save_atomically

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = path + ".tmp"
    torch.onnx.export(model.eval(), torch.zeros(1, 1, 28, 28), temporary, input_names=["data"], output_names=["logits"],
                      opset_version=13, do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE, dynamo=False)
    exported = _without_identities(onnx.load(temporary))
    os.unlink(temporary)
    exported.producer_name = "rebirth_tvm.train_teacher"
    save_atomically(exported, path)


def _without_identities(model):
    """Drop the exporter's Identity nodes (one per BN statistic), reading their inputs directly."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.output[0] not in outputs}
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            while name in alias:
                name = alias[name]
            node.input[i] = name
    del graph.node[:]
    graph.node.extend(kept)
    return model


def main(argv=None) -> int:
    from rebirth_tvm import cli

    parser = cli.ArgumentParser(prog="python -m rebirth_tvm.train_teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT, help="ONNX file to write (default: the zoo's fashion_googlenet.onnx)")
    cli.add_debug_flag(parser)
    return cli.main(parser, argv, _train)


def _train(args) -> int:
    if args.epochs < 1 or args.batch < 1 or args.seed < 0 or not args.lr > 0:
        raise RebirthError("--epochs and --batch must be 1 or more, --seed 0 or more and --lr above 0")
    torch = _torch()
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    model, history = train(args.epochs, args.batch, args.lr, args.seed)
    test_x, test_y = fashion_mnist("test")
    test = evaluate(model, test_x, test_y)
    export_onnx(model, args.out)
    summary = {"test_top1": test, "best_val_top1": max(h["val_top1"] for h in history), "epochs": history,
               "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
               "parameters": sum(p.numel() for p in model.parameters()), "args": vars(args)}
    record = os.path.splitext(args.out)[0] + ".json"
    with open(record + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(record + ".tmp", record)
    print(f"test top-1 {test:.4f}; wrote {args.out} in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
