"""Where the TVM runtime libraries for the native runner come from.

The runner (``runner/rebirth_run.cc``) needs ``libtvm_runtime.so`` and ``libtvm_ffi.so`` built
for the machine it runs on, and the ``tvm_ffi`` headers (the same on every machine):

* **this machine**: the installed apache-tvm and apache-tvm-ffi wheels, found through
  ``tvm.libinfo`` / ``tvm_ffi.libinfo`` (never hard-coded paths);
* **aarch64**: the same versions' aarch64 wheels from PyPI, *downloaded* with pip (never
  installed) into a per-user cache, and the two libraries extracted from them. apache-tvm's
  aarch64 wheel is tagged ``manylinux_2_28`` only, so ``manylinux2014`` finds nothing.

``python -m rebirth_tvm.runtime_libs [host|aarch64] [--cmake]`` prints them; CMakeLists.txt
calls it that way.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

from rebirth_tvm.core.errors import RebirthError

ARCHES = ("host", "aarch64")
#: Inside the wheels: where each library lives.
_WHEEL_MEMBERS = {"apache-tvm": "tvm/lib/libtvm_runtime.so", "apache-tvm-ffi": "tvm_ffi/lib/libtvm_ffi.so"}


@dataclass(frozen=True)
class RuntimeLibs:
    """The runner's build inputs for one architecture."""

    arch: str
    include_dirs: tuple[str, ...]
    tvm_runtime: str
    tvm_ffi: str

    def cmake_lines(self) -> str:
        """``KEY=VALUE`` lines that CMakeLists.txt reads."""
        return "\n".join([
            f"REBIRTH_TVM_FFI_INCLUDE_DIRS={';'.join(self.include_dirs)}",
            f"REBIRTH_TVM_RUNTIME_LIBRARY={self.tvm_runtime}",
            f"REBIRTH_TVM_FFI_LIBRARY={self.tvm_ffi}",
        ])


def versions() -> dict[str, str]:
    """Installed versions of the two wheels; the aarch64 libraries must match them."""
    try:
        return {name: importlib.metadata.version(name) for name in _WHEEL_MEMBERS}
    except importlib.metadata.PackageNotFoundError as err:
        raise RebirthError(f"{err.name} is not installed: pip install -e . (it pins apache-tvm and apache-tvm-ffi)") from None


def include_dirs() -> tuple[str, ...]:
    import tvm_ffi.libinfo

    dirs = [tvm_ffi.libinfo.find_include_path(), tvm_ffi.libinfo.find_dlpack_include_path()]
    return tuple(dict.fromkeys(os.path.abspath(d) for d in dirs))


def host_libs() -> RuntimeLibs:
    import tvm.libinfo
    import tvm_ffi.libinfo

    return RuntimeLibs("host", include_dirs(), os.path.abspath(tvm.libinfo.find_libtvm_runtime()),
                       os.path.abspath(tvm_ffi.libinfo.find_libtvm_ffi()))


def cache_dir() -> str:
    base = os.environ.get("REBIRTH_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rebirth-tvm")
    return os.path.abspath(base)


def aarch64_libs(quiet: bool = False) -> RuntimeLibs:
    """The aarch64 runtime libraries of the installed versions, downloaded once and cached."""
    pinned = versions()
    target = os.path.join(cache_dir(), "runtime", "aarch64-" + "-".join(pinned[name] for name in _WHEEL_MEMBERS))
    paths = {name: os.path.join(target, os.path.basename(member)) for name, member in _WHEEL_MEMBERS.items()}
    if not all(os.path.exists(p) for p in paths.values()):
        os.makedirs(target, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rebirth-wheels-") as download:
            for name, member in _WHEEL_MEMBERS.items():
                # A folder per wheel: "apache-tvm-" is also the start of apache-tvm-ffi's name.
                wheel = _download_aarch64_wheel(name, pinned[name], os.path.join(download, name), quiet)
                _extract(wheel, member, paths[name])
    return RuntimeLibs("aarch64", include_dirs(), paths["apache-tvm"], paths["apache-tvm-ffi"])


def libs_for(arch: str, quiet: bool = False) -> RuntimeLibs:
    if arch == "host":
        return host_libs()
    if arch == "aarch64":
        return aarch64_libs(quiet)
    raise RebirthError(f"unknown runtime architecture {arch!r}; known: {', '.join(ARCHES)}")


def _download_aarch64_wheel(name: str, version: str, dest: str, quiet: bool) -> str:
    # apache-tvm is one py3 wheel; apache-tvm-ffi has one per CPython, so ask for this one's
    # (its libtvm_ffi.so is the same in all of them).
    python = f"{sys.version_info.major}{sys.version_info.minor}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
               "--python-version", python, "--implementation", "cp", "-d", dest, f"{name}=={version}"]
    if not quiet:
        print(f"downloading the aarch64 {name} {version} wheel for its runtime library ...", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = [f for f in os.listdir(dest) if f.endswith(".whl")] if os.path.isdir(dest) else []
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RebirthError(f"cannot download the aarch64 {name}=={version} wheel from PyPI ({last})")
    return os.path.join(dest, wheels[0])


def _extract(wheel: str, member: str, path: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(member)
        except KeyError:
            raise RebirthError(f"{os.path.basename(wheel)} has no {member}") from None
    temporary = path + ".part"
    with open(temporary, "wb") as f:
        f.write(data)
    os.chmod(temporary, 0o755)
    os.replace(temporary, path)  # a reader never sees half a library
