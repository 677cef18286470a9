"""keep_freed_memory: tensors of megabytes come from the heap, which keeps what is freed,
instead of pages of their own that go back to the system when freed (and fault in anew)."""

import subprocess
import sys

import pytest

# In a fresh process: for tensors of 1 to 30 MB, each made and freed in turn, as a
# forward pass does by the hundred, whether it lay in the heap ([heap] in the maps).
HEAP_OR_NOT = """
import sys, torch
if sys.argv[1] == "keep":
    from conformer_asr.malloc import keep_freed_memory
    assert keep_freed_memory()
def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = line.split()[0].split("-")
            return int(start, 16), int(end, 16)
for mb in (1, 4, 8, 16, 30):
    x = torch.ones(mb << 18)  # float32: mb MB
    start, end = heap()
    print(start <= x.data_ptr() < end)
    del x
"""


def from_the_heap(mode: str) -> list[bool]:
    out = subprocess.run([sys.executable, "-c", HEAP_OR_NOT, mode], capture_output=True,
                         text=True, check=True)
    return [line == "True" for line in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tensors_of_megabytes_come_from_the_heap():
    # glibc's default gives each block above its threshold (128 KiB, raised to the
    # largest such block freed so far) pages of its own: every new largest size
    assert from_the_heap("default") == [False] * 5
    assert from_the_heap("keep") == [True] * 5


def test_the_command_line_keeps_freed_memory():
    code = ("import conformer_asr.cli as cli, conformer_asr.malloc as m; "
            "cli.main(['model-info', 'default']); print(m.keep_freed_memory.cache_info())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "currsize=1" in out.stdout.splitlines()[-1]
