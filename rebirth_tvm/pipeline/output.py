"""Writing a result into the user's ``--out`` without ever losing a file the tool did not write.

The rules, checked once before any work (:meth:`OutputPlan.check`) and again under a lock when
the result is committed:

* ``--out`` names a directory. It is refused when it is empty, an existing file, or a directory
  holding files rebirth-tvm does not write (a project folder, ``.``) unless ``force``; even then
  only the tool's own files are written into it and nothing else is touched.
* A new directory appears whole: it is staged beside its final place and renamed into it.
* In an existing result directory each file is replaced atomically (``rename``) after a hard-link
  backup of the old one; if anything fails part-way every file is put back, so the directory
  holds either the old result or the new one. Concurrent writers take turns (``flock``).
* ``--save-onnx`` is part of the same transaction, and is never the input model.
* Staging is removed on every exit path (errors, SIGINT, SIGTERM); permissions follow the umask.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from rebirth_tvm.core.errors import RebirthError

#: Every file name the tool writes into ``--out`` (the runner bundle included).
TOOL_FILES = ("model.so", "report.json", "report.md", "rebirth-run", "libtvm_runtime.so", "libtvm_ffi.so")
#: Written with the execute bit (where the umask allows it).
_EXECUTABLES = {"model.so", "rebirth-run", "libtvm_runtime.so", "libtvm_ffi.so"}
#: ``report.json``'s mark that a directory holds a rebirth-tvm result.
WRITTEN_BY = "rebirth-tvm"
STAGING_PREFIX = ".rebirth-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _probe_writable(directory: str, what: str) -> None:
    """Make and remove a staging directory: the only test of writability that cannot lie
    (``os.access`` says yes to root under ``/proc`` and on read-only mounts)."""
    try:
        probe = tempfile.mkdtemp(prefix=STAGING_PREFIX + "probe-", dir=directory)
        os.rmdir(probe)
    except OSError as err:
        raise RebirthError(f"cannot write {what}: {err.strerror or err} ({directory})") from None


def _previous_result_files(directory: str) -> set[str] | None:
    """The files a rebirth-tvm result in ``directory`` says it wrote, or None if it is not one."""
    try:
        with open(os.path.join(directory, "report.json")) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    if str(report.get("written_by", "")).startswith(WRITTEN_BY):
        return set(TOOL_FILES) | {str(n) for n in report.get("files", []) if isinstance(n, str)}
    if {"ops_before", "ops_after", "sites"} <= set(report):  # written before the mark existed
        return set(TOOL_FILES)
    return None


@dataclass
class OutputPlan:
    """Where a result goes: the ``--out`` directory and, optionally, the rewritten ONNX file."""

    out_dir: str
    force: bool = False
    onnx_path: str | None = None
    #: names (besides :data:`TOOL_FILES`) this run writes into ``out_dir`` (an ONNX saved there).
    extra_names: tuple = field(default=())

    @classmethod
    def check(cls, out_dir, force: bool = False, onnx_path=None, model_path=None) -> "OutputPlan":
        """Validate before any work; raises :class:`RebirthError` with one line saying why not."""
        if out_dir is None or not str(out_dir).strip():
            raise RebirthError("--out is empty: name a new (or empty) directory for model.so, report.json and report.md")
        out = os.path.abspath(os.fspath(out_dir))
        extra = ()
        if onnx_path is not None:
            if not str(onnx_path).strip():
                raise RebirthError("--save-onnx is empty: name the .onnx file to write")
            onnx_path = os.path.abspath(os.fspath(onnx_path))
            if model_path is not None and os.path.exists(onnx_path) and os.path.exists(model_path) \
                    and os.path.samefile(onnx_path, model_path):
                raise RebirthError(f"--save-onnx {onnx_path} is the input model; write the rewritten model to another file")
            if os.path.isdir(onnx_path):
                raise RebirthError(f"--save-onnx {onnx_path} is a directory; name a file")
            if os.path.dirname(onnx_path) == out:
                if os.path.basename(onnx_path) in TOOL_FILES:
                    raise RebirthError(f"--save-onnx {onnx_path} would replace the tool's own {os.path.basename(onnx_path)}; "
                                       "choose another name (e.g. model.onnx)")
                extra = (os.path.basename(onnx_path),)
            elif onnx_path.startswith(out + os.sep):
                raise RebirthError(f"--save-onnx {onnx_path} is in a folder inside --out; write it into --out itself or outside it")
            elif os.path.lexists(onnx_path) and not force and not _written_by_us(onnx_path):
                raise RebirthError(f"--save-onnx {onnx_path} exists and was not written by rebirth-tvm; "
                                   "choose another file, or add --force to replace it")
        plan = cls(out, force, onnx_path, extra)
        plan._check_out_dir()
        if onnx_path is not None:
            parent = os.path.dirname(onnx_path)
            existing = _nearest_existing(parent)
            if not os.path.isdir(existing):
                raise RebirthError(f"cannot write --save-onnx {onnx_path}: {existing} is a file, not a directory")
            _probe_writable(existing, f"--save-onnx {onnx_path}")
        return plan

    @property
    def names(self) -> set[str]:
        return set(TOOL_FILES) | set(self.extra_names)

    def _check_out_dir(self) -> None:
        out = self.out_dir
        if os.path.lexists(out) and not os.path.isdir(out):
            raise RebirthError(f"--out {out} is an existing file, not a directory; name a directory (it is created if missing)")
        if os.path.isdir(out):
            entries = sorted(os.listdir(out))
            ours = _previous_result_files(out) if entries else set()
            foreign = [n for n in entries if not n.startswith(STAGING_PREFIX)
                       and (ours is None or n not in ours | self.names)]
            if foreign and not self.force:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise RebirthError(
                    f"--out {out} holds files rebirth-tvm did not write ({shown}); choose a new or empty directory, "
                    f"or add --force to write {', '.join(sorted(self.names & set(TOOL_FILES[:3])))} into it (nothing else is touched)")
            _probe_writable(out, f"into --out {out}")
        else:
            existing = _nearest_existing(os.path.dirname(out))
            if not os.path.isdir(existing):
                raise RebirthError(f"cannot create --out {out}: {existing} is a file, not a directory")
            _probe_writable(existing, f"--out {out}")

    @contextlib.contextmanager
    def staging(self):
        """Yield a :class:`Staging` to write the files into; removed on every exit path.

        Call :meth:`Staging.commit` inside the block to put the files in place.
        """
        stage = Staging(self)
        try:
            yield stage
        finally:
            stage.discard()


def _written_by_us(path: str) -> bool:
    try:
        import onnx

        return onnx.load(path, load_external_data=False).producer_name == WRITTEN_BY
    except Exception:
        return False


class Staging:
    """Files written aside, then committed as one transaction."""

    def __init__(self, plan: OutputPlan):
        self.plan = plan
        self._new_dir = not os.path.isdir(plan.out_dir)
        if self._new_dir:
            parent = os.path.dirname(plan.out_dir)
            os.makedirs(parent, exist_ok=True)  # honours the umask
            self.directory = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent)
        else:  # inside the target: same file system, so every rename is atomic
            self.directory = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=plan.out_dir)
        self._onnx_staged = None
        self._cleanup = [self.directory]

    def path(self, name: str) -> str:
        """Where to write ``name`` (one of the tool's file names) before the commit."""
        if name not in self.plan.names:
            raise ValueError(f"{name} is not a file rebirth-tvm writes into --out")
        return os.path.join(self.directory, name)

    def onnx_path(self) -> str:
        """Where to write the ``--save-onnx`` model before the commit."""
        if self.plan.onnx_path is None:
            raise ValueError("no --save-onnx was asked for")
        if self.plan.extra_names:
            return self.path(self.plan.extra_names[0])
        if self._onnx_staged is None:
            directory = os.path.dirname(self.plan.onnx_path)
            os.makedirs(directory, exist_ok=True)
            staged = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory)
            self._cleanup.append(staged)
            self._onnx_staged = os.path.join(staged, os.path.basename(self.plan.onnx_path))
        return self._onnx_staged

    def commit(self) -> list[str]:
        """Put every staged file in place, all or nothing; returns the names written into ``--out``."""
        mask = _umask()
        names = sorted(os.listdir(self.directory))
        for name in names:
            os.chmod(os.path.join(self.directory, name), (0o777 if name in _EXECUTABLES else 0o666) & ~mask)
        if self._onnx_staged and os.path.exists(self._onnx_staged):
            os.chmod(self._onnx_staged, 0o666 & ~mask)
        moves = [(os.path.join(self.directory, n), os.path.join(self.plan.out_dir, n)) for n in names]
        if self._onnx_staged:
            moves.append((self._onnx_staged, self.plan.onnx_path))
        if self._new_dir:
            os.chmod(self.directory, 0o777 & ~mask)
            try:
                os.rename(self.directory, self.plan.out_dir)  # the whole directory appears at once
            except OSError:
                # Another writer made it meanwhile: take the existing-directory path below.
                self._new_dir = False
            else:
                self._cleanup.remove(self.directory)
                self.directory = self.plan.out_dir
                moves = moves[len(names):]
        if moves:
            with _locked(self.plan.out_dir):
                if not self._new_dir:
                    self.plan._check_out_dir()  # the directory may have changed during the run
                    moves += self._stale_moves(names)
                _replace_all(moves)
        return names

    def _stale_moves(self, names: list[str]) -> list[tuple[None, str]]:
        """The runner bundle of a previous result when this one has none: removed with the rest,
        so the runner beside model.so is never an older one. Only the tool's own file names, and
        only in a recognised result; anything else an earlier run wrote there (an ONNX saved with
        --save-onnx) may have been taken over by the user since, and stays."""
        if _previous_result_files(self.plan.out_dir) is None:
            return []
        return [(None, os.path.join(self.plan.out_dir, n)) for n in TOOL_FILES
                if n not in names and os.path.isfile(os.path.join(self.plan.out_dir, n))
                and not os.path.islink(os.path.join(self.plan.out_dir, n))]

    def inherited_names(self) -> list[str]:
        """Files an earlier result in ``--out`` wrote, still there and not written again now:
        listed in the new report too, so that later runs still recognise them as the tool's."""
        if self._new_dir:
            return []
        ours = _previous_result_files(self.plan.out_dir) or set()
        return sorted(n for n in ours - set(TOOL_FILES) - self.plan.names
                      if os.sep not in n and os.path.isfile(os.path.join(self.plan.out_dir, n)))

    def discard(self) -> None:
        for directory in self._cleanup:
            shutil.rmtree(directory, ignore_errors=True)
        self._cleanup = []


@contextlib.contextmanager
def _locked(directory: str):
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _replace_all(moves) -> None:
    """``(source, destination)`` renames (source None: remove) as one transaction: each old file
    is hard-linked aside first (beside it, on its file system), so a failure part-way restores
    every one of them."""
    backups: dict[str, str] = {}
    done = []  # (destination, backup copy or None)
    try:
        for i, (source, destination) in enumerate(moves):
            saved = None
            if os.path.lexists(destination):
                directory = os.path.dirname(destination)
                if directory not in backups:
                    backups[directory] = tempfile.mkdtemp(prefix=STAGING_PREFIX + "old-", dir=directory)
                saved = os.path.join(backups[directory], str(i))
                try:
                    os.link(destination, saved, follow_symlinks=False)
                except OSError:  # a file system without hard links
                    shutil.copy2(destination, saved, follow_symlinks=False)
            if source is None:
                os.unlink(destination)
            else:
                os.replace(source, destination)
            done.append((destination, saved))
    except BaseException:
        for destination, saved in reversed(done):
            if saved is not None:
                os.replace(saved, destination)
            elif os.path.lexists(destination):
                os.unlink(destination)
        raise
    finally:
        for backup in backups.values():
            shutil.rmtree(backup, ignore_errors=True)
