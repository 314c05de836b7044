# Cross-compile rebirth-run for 64-bit ARM Linux with Debian's GNU toolchain
# (apt-get install g++-aarch64-linux-gnu qemu-user):
#   cmake -S . -B build/runner-arm --toolchain cmake/aarch64-linux-gnu.cmake
# The TVM runtime libraries it links come from PyPI's aarch64 apache-tvm wheels (see
# rebirth_tvm/runtime_libs.py); ctest runs the tests under qemu-aarch64.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
# The C++ compiler model.so is linked with: -DREBIRTH_AARCH64_CXX=..., else the environment's
# REBIRTH_AARCH64_CXX (as rebirth_tvm.backend.targets reads it), else Debian's.
if(NOT REBIRTH_AARCH64_CXX)
  if(DEFINED ENV{REBIRTH_AARCH64_CXX})
    set(REBIRTH_AARCH64_CXX "$ENV{REBIRTH_AARCH64_CXX}")
  else()
    set(REBIRTH_AARCH64_CXX aarch64-linux-gnu-g++)
  endif()
endif()
set(CMAKE_CXX_COMPILER "${REBIRTH_AARCH64_CXX}")

set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)   # programs (python, qemu) are the host's
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# ctest (and try_run) run aarch64 programs through qemu's user-mode emulator. -L points it at
# the aarch64 C/C++ libraries the cross toolchain installed, as the host has no aarch64 loader.
find_program(REBIRTH_QEMU_AARCH64 qemu-aarch64)
if(REBIRTH_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${REBIRTH_QEMU_AARCH64};-L;/usr/aarch64-linux-gnu")
else()
  message(WARNING "qemu-aarch64 not found (Debian package qemu-user): the runner builds, but ctest cannot run it here")
endif()
