"""Directories and files that readers never see half-written, and disk faults reported as one clear line.

A directory artifact (prepared dataset, model bundle, retrieval bundle) is built beside its target as
``.NAME.tmp-PID`` and published in one step: on Linux the two directories are exchanged atomically
(``renameat2(RENAME_EXCHANGE)``), so ``NAME`` always holds the old or the new artifact, never nothing.
Where the exchange is unsupported (another OS, some filesystems) the old artifact is renamed to
``.NAME.old-PID`` before the new one is renamed in; a crash between those two renames leaves ``NAME``
missing, and the next ``building()`` of ``NAME`` or ``recover()`` (called by ``PreparedDataset.open``)
renames the old artifact back. The marker file (``dataset.json``, ``bundle.json``) is written last, so a
directory without it never loads. Temporary directories of processes that died (kill -9, power loss)
are removed by the next ``building()`` beside them.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ctrzoo.errors import CtrzooError

_DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EIO: "an I/O error (a failing disk?)", errno.EFBIG: "the file is too large for the filesystem"}


def _hint(reason: str | None) -> str:
    return "free some space and run again" if reason and ("full" in reason or "quota" in reason) \
        else "check the disk and run again"


class DiskError(CtrzooError):
    """A write that failed for lack of space (or a failing disk): names what was being written."""

    def __init__(self, message: str, what: str | None = None, path: Path | None = None, reason: str | None = None):
        super().__init__(message)
        self.what, self.path, self.reason = what, path, reason

    def __reduce__(self):  # across process pools, with its fields
        return (DiskError, (str(self), self.what, self.path, self.reason))


def disk_reason(exc: BaseException, io_errors: bool = True) -> str | None:
    """Why ``exc`` (or an error it wraps: torch and pyarrow re-raise OS errors) is a disk fault, or None.

    ``io_errors=False`` leaves EIO out: around code that also reads, an EIO may not be a write's.
    """
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, DiskError):
            return exc.reason or _DISK_ERRNOS[errno.ENOSPC]
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS and (io_errors or exc.errno != errno.EIO):
            return _DISK_ERRNOS[exc.errno]
        if "No space left on device" in str(exc):
            return _DISK_ERRNOS[errno.ENOSPC]
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


@contextmanager
def disk_errors(what: str, path: str | Path | None = None, io_errors: bool = True) -> Iterator[None]:
    """Turn a disk fault inside the block into one ``DiskError`` line naming ``what`` (and ``path``)."""
    try:
        yield
    except CtrzooError:
        raise
    except Exception as exc:
        reason = disk_reason(exc, io_errors) or (_nearly_full(path) and _DISK_ERRNOS[errno.ENOSPC])
        if not reason:
            raise
        where = f"{path}: " if path is not None else ""
        raise DiskError(f"{where}cannot write {what}: {reason} ({_hint(reason)})",
                        what, Path(path) if path is not None else None, reason) from exc


def _nearly_full(path: str | Path | None) -> bool:
    """Whether the filesystem of ``path`` has (almost) no space left: for writers that lose the OS error,
    such as ``torch.save`` to a path name (a bare ``RuntimeError: ... unexpected pos``)."""
    if path is None:
        return False
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


_NEARLY_FULL_BYTES = 1 << 20


def replace_file(path: str | Path, write: Callable[[Any], None], what: str) -> None:
    """Write ``path`` through ``.NAME.tmp-PID`` (``write`` gets an open binary file) and rename it in.

    On any failure, interruption included, the temporary file is removed: a full disk never leaves a
    growing half-written file behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with disk_errors(what, path):
            with open(tmp, "wb") as fh:
                write(fh)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Replace a JSON file in one rename (readers see the old or the new content, never a mix)."""
    payload = json.dumps(data, indent=1).encode()
    replace_file(path, lambda fh: fh.write(payload), Path(path).name)


def read_json(path: Path, error: type[CtrzooError], what: str) -> Any:
    """Parse JSON or raise ``error`` naming the file (and line) and what it should have been."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: missing {what}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


# -- publishing directories ----------------------------------------------------------------------------


@contextmanager
def building(out: str | Path, marker: str, what: str, error: type[CtrzooError] = CtrzooError) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``out``; on success it replaces ``out``, on error vanishes.

    Only an earlier artifact of the same kind (one with ``marker``), an empty directory or nothing may be
    replaced: never a user's other files. A disk fault while building is one ``DiskError`` naming ``out``.
    """
    out = Path(out)
    if out.parent.is_dir():
        recover(out, marker)
        clean_stale(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise error(f"{out} exists and is not a {what}: refusing to replace it")
    tmp = _sibling(out, "tmp", os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with disk_errors(f"the {what}", out, io_errors=False):  # the body reads inputs too
            tmp.mkdir(parents=True)
            yield tmp
            publish(tmp, out)
    except DiskError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        part = ""
        if exc.path is not None and exc.path.is_relative_to(tmp):
            part = f" ({exc.what} {exc.path.relative_to(tmp)})"
        state = "left as it was" if out.exists() else "not created"
        raise DiskError(f"{out}: cannot write the {what}{part}: {exc.reason}; {out} was {state}, nothing "
                        f"half-written is left ({_hint(exc.reason)})", what, out, exc.reason) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, out: Path) -> None:
    """Move the complete directory ``tmp`` to ``out``; readers of ``out`` see the old or the new one."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if exchange(tmp, out):  # tmp now holds the old artifact
        _remove(tmp)
        return
    # fallback: a window between the two renames, closed afterwards by recover()
    old = _sibling(out, "old", os.getpid())
    _remove(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)  # put the old artifact back (a hard kill here is recover()'s case)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    """Remove a directory tree, or the link itself where an old artifact was a symbolic link."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unsupported."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this kernel or filesystem cannot exchange
    raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


def _sibling(out: Path, kind: str, pid: int) -> Path:
    return out.parent / f".{out.name}.{kind}-{pid}"


def _siblings(out: Path, kind: str) -> list[tuple[Path, int]]:
    """``.NAME.KIND-PID`` entries beside ``out``, with their pid (entries with another suffix are ignored)."""
    prefix = f".{out.name}.{kind}-"
    found = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return []
    for p in entries:
        if p.name.startswith(prefix) and p.name[len(prefix):].isdigit():
            found.append((p, int(p.name[len(prefix):])))
    return found


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (one of another user counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def recover(out: str | Path, marker: str) -> bool:
    """If ``out`` is missing because its writer died between the fallback's two renames, rename the old
    artifact back (the newest ``.NAME.old-PID`` of a dead process with ``marker``). True if it did."""
    out = Path(out)
    if out.exists():
        return False
    olds = [(p, pid) for p, pid in _siblings(out, "old") if not pid_alive(pid) and (p / marker).is_file()]
    for p, _ in sorted(olds, key=lambda e: e[0].stat().st_mtime, reverse=True):
        try:
            os.rename(p, out)
            return True
        except OSError:  # another reader recovered it first, or no permission: read-only is fine
            continue
    return False


def clean_stale(out: str | Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID`` / ``.NAME.old-PID`` left beside ``out`` by dead processes; returns them.

    Those of live processes (a concurrent prepare of the same output) are left alone. Pids are of this
    machine's (container's) process namespace: do not share an output directory between machines.
    """
    out = Path(out)
    removed = []
    for kind in ("tmp", "old"):
        for p, pid in _siblings(out, kind):
            if not pid_alive(pid):
                _remove(p)
                if not p.exists() and not p.is_symlink():
                    removed.append(p)
    return removed
