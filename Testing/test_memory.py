import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc setting (Linux only)")
def test_keep_freed_memory_cuts_page_faults():
    """Importing the package leaves the allocator alone; with the setting, freeing and re-allocating
    a 64 MB block reuses the heap instead of fresh pages (as torch and numpy do with an analysis's arrays)."""
    code = (
        "import ctypes, resource, sys\n"
        "import deepstrain.analyze, deepstrain.cli\n"  # importing the package must not change the allocator
        "from deepstrain.memory import keep_freed_memory\n"
        "ok = keep_freed_memory() if sys.argv[1] == '1' else True\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "def touch():\n"
        "    p = libc.malloc(64 << 20); ctypes.memset(p, 1, 64 << 20); libc.free(p)\n"
        "touch()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5):\n"
        "    touch()\n"
        "print(int(ok), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {}
    for flag in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == "1"
        faults[flag] = int(out[1])
    assert faults["0"] > 5 * 10000  # 5 x 16384 fresh pages of 4 kB each without the setting
    assert faults["1"] < faults["0"] / 10

