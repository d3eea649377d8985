"""Jobs that need the same NSS entries compute each once: one computes, the others take
other entries or wait for it."""
import csv
import os
import subprocess
import sys

import numpy as np

from conftest import python_path

JOB = """
import os, sys, time
import numpy as np
from siqa.nss import cache
real = cache.compute_pair
def counted(left, right, *args, **kwargs):
    with open(sys.argv[2], "a") as log:
        log.write(f"{os.getpid()} {left}\\n")
    time.sleep(0.4)  # a slower marginal: the jobs overlap
    return real(left, right, *args, **kwargs)
cache.compute_pair = counted
pairs = [tuple(line.split(",")) for line in sys.argv[4].split(";")]
np.save(sys.argv[3], cache.nss_targets(pairs, cache_dir=sys.argv[1], workers=1, progress=False))
"""


def test_three_jobs_on_a_cold_cache_compute_each_entry_once(tiny_manifest, tmp_path):
    with open(tiny_manifest, newline="") as f:
        pairs = [(str(tiny_manifest.parent / r["left"]), str(tiny_manifest.parent / r["right"]))
                 for r in csv.DictReader(f)]
    arg = ";".join(",".join(p) for p in pairs)
    log = tmp_path / "computed.log"
    env = {**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path / "cache"), str(log),
                              str(tmp_path / f"out{i}.npy"), arg], env=env, stderr=subprocess.PIPE,
                             text=True) for i in range(3)]
    for job in jobs:
        assert job.wait(timeout=600) == 0, job.stderr.read()
    computed = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert sorted(left for _, left in computed) == sorted(left for left, _ in pairs)  # each once
    assert len({pid for pid, _ in computed}) >= 2  # the work was shared
    out = [np.load(tmp_path / f"out{i}.npy") for i in range(3)]
    assert all(np.array_equal(o, out[0]) for o in out) and np.all(np.isfinite(out[0]))
    assert not list((tmp_path / "cache").rglob("*.lock"))
