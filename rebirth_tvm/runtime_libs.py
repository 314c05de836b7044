"""``python -m rebirth_tvm.runtime_libs``: where the native runner's TVM runtime libraries are.

Finding and caching them is :mod:`rebirth_tvm.backend.runtime_libs`.
"""

from __future__ import annotations

import sys

from rebirth_tvm import cli
from rebirth_tvm.backend.runtime_libs import ARCHES, libs_for


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m rebirth_tvm.runtime_libs",
                                description="Print where the TVM runtime libraries and tvm_ffi headers for the native runner are "
                                            "(aarch64: downloaded from PyPI once, then cached).")
    parser.add_argument("arch", nargs="?", default="host", choices=ARCHES)
    parser.add_argument("--cmake", action="store_true", help="print KEY=VALUE lines for CMakeLists.txt")
    cli.add_debug_flag(parser)
    return cli.main(parser, argv, _print)


def _print(args) -> int:
    libs = libs_for(args.arch)
    if args.cmake:
        print(libs.cmake_lines())
    else:
        print(f"headers:        {' '.join(libs.include_dirs)}")
        print(f"libtvm_runtime: {libs.tvm_runtime}")
        print(f"libtvm_ffi:     {libs.tvm_ffi}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
