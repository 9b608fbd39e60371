"""A runtime keeps the host memory it frees: a freed 64 MiB tensor's pages serve the next one, where
glibc's defaults give them back to the kernel and fault the next one in afresh."""
import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's allocator")

PROBE = """
import json, resource, torch
from flexgen_core.memory import host_allocator
from flexgen_core.memory.tiers import TierSet
tiers = TierSet(torch.device("cpu"))
def faults_of_five_64mib_tensors():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(16 << 20, dtype=torch.float32).fill_(1.0)  # filled, so every page is touched
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_five_64mib_tensors()  # the first one is faulted in either way
kept = faults_of_five_64mib_tensors()
tiers.close()
print(json.dumps({"faults": kept, "described": host_allocator.describe()}))
"""


def probe(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_a_runtime_reuses_the_pages_of_tensors_it_freed():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    kept = probe()
    assert kept["described"].startswith("glibc malloc keeps freed memory")
    assert kept["faults"] < pages // 4  # five tensors of `pages` pages each, nearly all reused


def test_the_users_own_malloc_settings_are_left_as_they_are():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    left = probe(MALLOC_TOP_PAD_="0")  # changes nothing about big blocks: glibc's defaults map them afresh
    assert left["described"].startswith("glibc malloc as the user's")
    assert left["faults"] >= 4 * pages
