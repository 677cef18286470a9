"""files: whole files or none, errors that name the file, leftovers of killed writes."""

import errno
import gzip
import lzma
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conformer_asr.files import (
    _in_place,
    check_writable,
    claimed,
    read_text,
    remove_leftovers,
    replacing,
    write_atomically,
)


def test_writes_text_and_bytes_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "out.txt"
    write_atomically(target, "first\n")
    write_atomically(target, b"second\n")
    assert target.read_bytes() == b"second\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failed_write_names_the_file_and_removes_its_temporary(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(IsADirectoryError) as raised:
        write_atomically(folder, "data")
    assert raised.value.filename == str(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
    assert not list(folder.iterdir())


def test_an_error_in_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "cuts.jsonl.gz"
    target.write_text("old")
    with pytest.raises(ValueError), replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".cuts.jsonl.gz.")
        assert tmp.suffix == ".gz"  # writers that read the format from the name still can
        tmp.write_text("half of the new")
        raise ValueError("killed midway")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["cuts.jsonl.gz"]


def test_an_error_about_another_file_is_not_renamed(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError) as raised, replacing(tmp_path / "out.txt") as tmp:
        tmp.write_text(missing.read_text())
    assert raised.value.filename == str(missing)


def test_a_link_is_written_through_and_a_pipe_or_device_in_place(tmp_path):
    """``--output`` given a link, a FIFO or a device: each used to be replaced by a plain
    file (as root, /dev/full and /dev/stdout too)."""
    (tmp_path / "target.jsonl").write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to("target.jsonl")
    check_writable(link)
    write_atomically(link, "new\n")
    assert link.is_symlink() and (tmp_path / "target.jsonl").read_text() == "new\n"

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()), daemon=True)
    reader.start()
    check_writable(fifo)  # without opening it: that would wait for a reader
    write_atomically(fifo, "through the pipe\n")
    reader.join(timeout=30)
    assert read == ["through the pipe\n"] and fifo.is_fifo()

    stdout = tmp_path / "stdout"  # as /dev/stdout, which a regression would replace
    stdout.symlink_to("/proc/self/fd/1")
    to_stdout = subprocess.run(
        [sys.executable, "-c", "from conformer_asr.files import write_atomically; "
         f"write_atomically({str(stdout)!r}, 'to the pipe')"],
        capture_output=True, text=True, timeout=60)
    assert (to_stdout.returncode, to_stdout.stdout) == (0, "to the pipe")
    assert stdout.is_symlink()
    # a name in /dev is written in place even where it leads to a file (a shell's redirect)
    assert _in_place(Path("/dev/stdout")) and not _in_place(tmp_path / "target.jsonl")

    full = tmp_path / "full"  # /dev/full's twin, so that a regression replaces only it
    try:
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        full.open("wb").close()
    except OSError:
        pytest.skip("this user cannot make or open a device node here")
    with pytest.raises(OSError, match=rf"^\[Errno 28\] No space left on device: '{full}'$"):
        write_atomically(full, "data")
    assert full.is_char_device()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "full", "link.jsonl",
                                                         "stdout", "target.jsonl"]


def test_sync_and_leftovers(tmp_path):
    with replacing(tmp_path / "state.pt", sync=True) as tmp:
        tmp.write_bytes(b"state")
    assert (tmp_path / "state.pt").read_bytes() == b"state"
    # what a writer killed midway leaves, beside files that are not its
    (tmp_path / ".state.pt.0a1b2c3d.tmp.pt").write_bytes(b"sta")
    (tmp_path / ".lock").write_text("1\n")
    (tmp_path / "notes.tmp").write_text("mine")
    assert remove_leftovers(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "notes.tmp", "state.pt"]


def test_read_text_takes_utf8_gzip_and_xz_and_names_a_file_that_is_none(tmp_path):
    plain = tmp_path / "bom.jsonl"
    plain.write_bytes("\ufeffcaf\u00e9\n".encode())  # a byte-order mark, as Notepad writes
    assert read_text(plain) == "caf\u00e9\n"
    packed = tmp_path / "lines.txt.gz"
    packed.write_bytes(gzip.compress(b"one\ntwo\n"))
    assert read_text(packed) == "one\ntwo\n"

    binary = tmp_path / "audio.wav"
    binary.write_bytes(b"RIFF\xa4\x00\x00\x00WAVE")
    with pytest.raises(ValueError, match=rf"^{binary}: not UTF-8 text \(byte 4\)$"):
        read_text(binary)
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(packed.read_bytes()[:-8])
    with pytest.raises(ValueError, match=rf"^{cut}: not a complete gzip file"):
        read_text(cut)
    xz = tmp_path / "lines.txt.xz"
    xz.write_bytes(lzma.compress("caf\u00e9\ntwo\n".encode()))
    assert read_text(xz) == "caf\u00e9\ntwo\n"
    cut = tmp_path / "cut.txt.xz"
    cut.write_bytes(xz.read_bytes()[:-8])
    with pytest.raises(ValueError, match=rf"^{cut}: not a complete xz file"):
        read_text(cut)


_HOLD = """
import os, sys, time
from pathlib import Path
from conformer_asr.files import claimed
with claimed(Path(sys.argv[1]), "out_dir"):
    child = os.fork()  # as a DataLoader worker is forked, the lock's file open in it too
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
"""


def test_a_killed_runs_folder_is_free_at_once_though_its_children_live_on(tmp_path):
    """After kill -9, the run's DataLoader workers live on for seconds; the lock was flock's,
    which they shared, so the same command re-run at once said the dead run was using the
    folder."""
    folder = tmp_path / "exp"
    run = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE,
                           text=True)
    child = int(run.stdout.readline())
    try:
        with pytest.raises(ValueError, match=rf"^out_dir: another run \(process "
                                             rf"{run.pid}\) is using {folder}; wait for it, "
                                             "or stop it$"), claimed(folder, "out_dir"):
            pass
        run.kill()
        run.wait()
        with claimed(folder, "out_dir"):  # the child still lives
            assert (folder / ".lock").read_text() == f"{os.getpid()}\n"
    finally:
        run.kill()
        run.wait()
        os.kill(child, signal.SIGKILL)


def test_a_folder_made_for_a_run_that_failed_at_once_is_removed(tmp_path):
    for folder, kept in [(tmp_path / "new", False), (tmp_path / "old", True)]:
        if kept:
            folder.mkdir()
        with pytest.raises(RuntimeError), claimed(folder, "out_dir"):
            (folder / "empty-subfolder").mkdir()
            raise RuntimeError("a bad setting")
        assert folder.is_dir() == kept
    with pytest.raises(RuntimeError), claimed(tmp_path / "written", "out_dir"):
        (tmp_path / "written" / "config.yaml").write_text("x")
        raise RuntimeError("stopped after writing")
    assert (tmp_path / "written" / "config.yaml").is_file()


def test_a_folder_that_cannot_be_made_is_a_value_error_naming_the_setting(tmp_path):
    """Found before any work and named like the other setting errors (exit 2 in the CLI);
    it used to be an OSError (exit 1, the code for work that partly failed)."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    for folder, why in [(a_file, "a file, not a folder"), (a_file / "exp", "Not a directory"),
                        (Path("/sys/exp"), "Operation not permitted")]:
        with pytest.raises(ValueError, match=f"^--out {re.escape(str(folder))}: {why}$"), \
                claimed(folder, "--out"):
            pass


_FILE_SIZE_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))
"""

_WRITERS = """
from pathlib import Path
import torch
from conformer_asr.files import save_torch
from conformer_asr.inference.model_dir import BUNDLED_DIR, write_folder
from conformer_asr.text.tokenizer import Tokenizer
from conformer_asr.training.checkpoints import AtomicCheckpointIO

out = Path(sys.argv[1])
big = {"w": torch.zeros(200_000)}  # 800 kB
writes = [
    lambda: save_torch(big, out / "state.pt"),
    lambda: AtomicCheckpointIO().save_checkpoint(big, out / "checkpoints" / "last.ckpt"),
    lambda: write_folder(out / "model", Tokenizer.load(BUNDLED_DIR), big, {}),
]
for write in writes:
    try:
        write()
    except OSError as error:
        print(error.errno, error.filename)
"""


def test_a_write_that_fails_for_space_names_its_file_and_leaves_no_part(tmp_path):
    """A full disk stands in for a file-size limit here. torch.save and safetensors raised
    errors of their own that named no file ("unexpected pos 576 vs 534"), the command line
    printed their tracebacks, and a failed checkpoint's temporary file stayed, filling the
    disk."""
    proc = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT + _WRITERS, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{errno.EFBIG} {tmp_path / name}"
        for name in ("state.pt", "checkpoints/last.ckpt", "model/model.safetensors")]
    assert not list((tmp_path / "checkpoints").iterdir())
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["tokenizer.model"]
