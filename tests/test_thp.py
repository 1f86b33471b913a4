"""Python API users get the CLI's transparent-huge-page allocation: `import saeforge` before torch allocates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

SCRIPT = """
import saeforge, torch, os
x = torch.empty(64 * 2**20 // 4)
x.fill_(1.0)
start = x.data_ptr()
huge = 0
with open("/proc/self/smaps") as f:
    inside = False
    for line in f:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= start < hi
        elif inside and head == "AnonHugePages:":
            huge = int(line.split()[1])
print(os.environ["THP_MEM_ALLOC_ENABLE"], huge)
"""


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="this kernel has transparent huge pages off"
)
def test_importing_saeforge_backs_large_tensors_with_huge_pages():
    env = cli_env(OMP_NUM_THREADS="1")
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    flag, huge_kb = out.stdout.split()
    assert flag == "1" and int(huge_kb) >= 32 * 1024
