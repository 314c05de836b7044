"""``python -m rebirth_tvm.native``: build the native runner, and the helpers its ctest tests use.

The runner itself (building, copying, running a library) is :mod:`rebirth_tvm.backend.native`.
"""

from __future__ import annotations

import sys

from rebirth_tvm import cli
from rebirth_tvm.backend.native import VERIFY_TOLERANCE, build_runner, compare_files, write_fixture
from rebirth_tvm.core.errors import RebirthError


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m rebirth_tvm.native", description="Build the native runner, and the helpers its ctest tests use.",
                                epilog=cli.EXIT_CODES_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build rebirth-run (cached) and print its path")
    build_cmd.add_argument("--arch", default="host", choices=("host", "aarch64"))
    fixture = commands.add_parser("fixture", help="export a small model, its inputs and expected outputs")
    fixture.add_argument("--target", default="x86", choices=("x86", "arm"))
    fixture.add_argument("--out", required=True)
    compare = commands.add_parser("compare", help="compare ACTUAL EXPECTED .npy pairs")
    compare.add_argument("--tolerance", type=float, default=VERIFY_TOLERANCE)
    compare.add_argument("files", nargs="+")
    cli.add_debug_flag(parser)
    return cli.main(parser, argv, _run)


def _run(args) -> int:
    if args.command == "build":
        print(build_runner(args.arch, quiet=False))
    elif args.command == "fixture":
        write_fixture(args.target, args.out)
        print(f"wrote the {args.target} fixture to {args.out}")
    else:
        if len(args.files) % 2:
            raise RebirthError("compare needs ACTUAL EXPECTED pairs")
        print("\n".join(compare_files(list(zip(args.files[::2], args.files[1::2])), args.tolerance)))
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
