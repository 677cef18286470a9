"""Reading text files with errors that name them, writing files so that readers, and a run
killed mid-write, never see half of them, and keeping two runs out of one folder.

Every file the toolkit writes (checkpoints, model folders, manifests, logs, audio) goes
to a hidden temporary file beside its target and is renamed over the target once it is
complete. A process killed mid-write leaves only such a temporary file, which
``remove_leftovers`` clears when the next run starts in that folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import lzma
import os
import secrets
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

LEFTOVER_PATTERN = ".*.tmp*"  # the names temporary_beside makes
LOCK_FILE = ".lock"


DECOMPRESSORS = {".gz": ("gzip", gzip.decompress), ".xz": ("xz", lzma.decompress)}


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path``, decompressed if it ends in ``.gz`` or ``.xz``, without the
    byte-order mark some Windows editors write. A file that is not UTF-8 text (or not the
    compressed file its name says) is a ``ValueError`` naming it."""
    path = Path(path)
    data = path.read_bytes()
    kind, decompress = DECOMPRESSORS.get(path.suffix, ("", None))
    try:
        return (decompress(data) if decompress else data).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except (gzip.BadGzipFile, lzma.LZMAError, EOFError) as error:
        raise ValueError(f"{path}: not a complete {kind} file ({error})") from None


def naming(error: OSError, path: str | Path) -> OSError:
    """``error`` again, naming ``path``: the file a user knows (not a temporary one), or
    any file where the error named none (a failed close or flush names nothing)."""
    return type(error)(error.errno, error.strerror, str(path))


def temporary_beside(path: Path) -> Path:
    """A hidden name beside ``path``, new on each call (DDP ranks or workers writing the same
    file do not collide), that keeps ``path``'s last suffix for writers that read the
    format from it: ``out/cuts.jsonl.gz`` -> ``out/.cuts.jsonl.gz.1f2e3d4c.tmp.gz``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")


def _written_file(path: Path) -> Path:
    """The file a write to ``path`` goes to: where ``path`` points if it is a symbolic link
    (the link stays a link)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _in_place(path: Path) -> bool:
    """Whether a write to ``path`` goes into it as it is, with no file swapped for it: a
    device, pipe or socket (a FIFO), or any name in /dev (``/dev/stdout`` is the file a
    shell redirects to, which must stay the one the shell has open)."""
    return (path.absolute().is_relative_to("/dev")
            or (path.exists() and not path.is_file() and not path.is_dir()))


def check_writable(path: Path) -> None:
    """Raise an OSError naming ``path`` unless a file can be written to it the way
    :func:`write_atomically` writes (a read-only folder, say): found out before the work
    whose result it is to hold, not after."""
    try:
        if _in_place(path):  # not opened: a FIFO would wait for its reader
            if not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return
        probe = temporary_beside(_written_file(path))
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise naming(error, path) from None


@contextlib.contextmanager
def replacing(path: str | Path, sync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new contents to; when the block ends
    without error, rename it over ``path``, which so holds either its old contents or all of
    the new. ``sync`` flushes the data to disk before the rename (checkpoints: after a power
    cut the file is complete or absent). On error the temporary file is removed, and an
    ``OSError`` names ``path``, not the temporary file. A symbolic link is written through
    (the file it points to is replaced); a device or pipe is written to in place."""
    given = Path(path)
    if _in_place(given):
        try:
            yield given
        except OSError as error:
            raise naming(error, given) from None
        return
    path = _written_file(given)
    tmp = temporary_beside(path)
    try:
        yield tmp
        if sync:
            flush_to_disk(tmp)
        os.replace(tmp, path)
    except OSError as error:
        if error.filename not in (None, str(tmp)):  # about another file the block used
            raise
        raise naming(error, given) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def flush_to_disk(path: Path) -> None:
    """fsync ``path``: its data survives a power cut once this returns."""
    with path.open("rb") as f:
        os.fsync(f.fileno())


def write_atomically(path: str | Path, data: str | bytes, sync: bool = False) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through ``replacing``."""
    with replacing(path, sync) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a Python file object, so that a failed write (a
    full disk) raises the OSError behind it, naming ``path``; given a path, torch says only
    "unexpected pos 576 vs 534"."""
    import torch  # here: the command line imports this module, and needs no torch to start

    try:
        with path.open("wb") as f:
            torch.save(obj, f)
    except RuntimeError as error:
        cause = error.__context__
        if isinstance(cause, OSError) and cause.errno is not None:
            raise naming(cause, path) from None
        raise


def remove_leftovers(folder: Path) -> int:
    """Delete the temporary files that writes killed midway left in ``folder`` -> how many.
    Call it only while no other process writes there."""
    leftovers = [p for p in folder.glob(LEFTOVER_PATTERN) if p.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


def holds_more_than(folder: Path, names: Collection[str] = ()) -> bool:
    """Whether ``folder`` is a folder that holds anything besides ``names`` and hidden files
    (its lock, what a killed write left): someone else's, not one for a tool to write in."""
    return folder.is_dir() and any(not p.name.startswith(".") and p.name not in names
                                   for p in folder.iterdir())


@contextlib.contextmanager
def claimed(folder: Path, name: str) -> Iterator[None]:
    """Create ``folder`` if need be and hold an exclusive lock on it inside (its ``.lock``
    file holds the process id): a second run started on the same folder stops at once with
    a ValueError naming the setting ``name`` that gave it, instead of writing over the first
    one's files. The operating system drops the lock when the process ends, also after
    kill -9. The holder first clears what writes killed with an earlier run left half done.
    A folder created here and left with nothing written in it (the run failed at once) is
    removed again. A folder that cannot be made or written in is a ValueError too."""
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock_file = (folder / LOCK_FILE).open("a+")
    except OSError as error:  # found before any work, as a missing input is
        why = "a file, not a folder" if folder.is_file() else error.strerror
        raise ValueError(f"{name} {folder}: {why}") from None
    try:
        with lock_file as handle:
            try:
                # a POSIX record lock, which belongs to this process alone: processes forked
                # from it (DataLoader workers, which can outlive a killed run by seconds)
                # neither hold it nor keep it after this process has gone, as with flock
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                # held by another process; any other error is a file system without locks,
                # where the run goes unguarded
                if error.errno in (errno.EACCES, errno.EAGAIN):
                    handle.seek(0)
                    holder = handle.read().strip() or "?"
                    raise ValueError(f"{name}: another run (process {holder}) is using "
                                     f"{folder}; wait for it, or stop it") from None
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
            except OSError as error:  # a full disk: name the file
                raise naming(error, handle.name) from None
            for inner in (folder, *(p for p in folder.iterdir() if p.is_dir())):
                remove_leftovers(inner)
            yield
    except BaseException:
        if created and all(p.is_dir() or p == folder / LOCK_FILE for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)
        raise
