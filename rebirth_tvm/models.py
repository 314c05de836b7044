"""Command line for the model zoo.

    python -m rebirth_tvm.models --list
    python -m rebirth_tvm.models --export resnet18 resnet18.onnx [--seed 3]
"""

from __future__ import annotations

import argparse
import os
import sys

from rebirth_tvm import cli
from rebirth_tvm.core.errors import RebirthError
from rebirth_tvm.frontend.export_onnx import save_atomically
from rebirth_tvm.frontend.zoo import MODELS, build_model


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m rebirth_tvm.models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "List or export the zoo's CNNs as ONNX (opset 13) models with deterministic,\n"
            "seeded random weights. Input 'data' (float32 NCHW), output 'logits'\n"
            "(1x1000, no softmax)."
        ),
        epilog=(
            "examples:\n"
            "  python -m rebirth_tvm.models --list\n"
            "  python -m rebirth_tvm.models --export googlenet googlenet.onnx --seed 1"
        ),
    )
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="print one line per model: name, input shape, description")
    action.add_argument(
        "--export",
        nargs=2,
        metavar=("NAME", "FILE"),
        help="build model NAME and write it to FILE (written atomically)",
    )
    p.add_argument("--seed", type=int, default=0, help="weight RNG seed for --export (default: 0)")
    cli.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.main(_parser(), argv, _run)


def _run(args) -> int:
    if args.list:
        width = max(len(n) for n in MODELS)
        for spec in MODELS.values():
            shape = "x".join(str(d) for d in spec.input_shape)
            print(f"{spec.name:<{width}}  {shape:<12}  {spec.description}")
        return 0

    name, path = args.export
    if args.seed < 0:
        raise RebirthError(f"--seed must be 0 or more, got {args.seed}")
    if os.path.isdir(path):
        raise RebirthError(f"{path} is a directory; name the .onnx file to write")
    try:
        model = build_model(name, seed=args.seed)
    except ValueError as e:
        raise RebirthError(str(e)) from None
    data = model.SerializeToString()
    try:
        save_atomically(data, path)
    except OSError as e:
        raise RebirthError(f"cannot write {path}: {e.strerror or e}") from None
    print(f"wrote {name} (seed {args.seed}, {len(data)} bytes) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
