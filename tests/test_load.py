"""Load: siqa.load(...).score from several threads equals serial calls; predict.py
--manifest streams its rows (memory flat in their number) and writes its CSV atomically."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest


def test_score_from_several_threads_equals_serial(model, tiny_manifest):
    import torch

    folder = tiny_manifest.parent
    pairs = [(folder / f"s{s}_{k}_l.png", folder / f"s{s}_{k}_r.png") for s in range(8) for k in range(3)]
    assert torch.get_num_threads() > 1 or pytest.skip("one torch thread: nothing to race")
    threads = torch.get_num_threads()
    serial = [model.score(left, right) for left, right in pairs]
    batches = model.score([p[0] for p in pairs], [p[1] for p in pairs])
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            threaded = list(pool.map(lambda p: model.score(*p), pairs))
            assert threaded == serial
            lists = list(pool.map(lambda _: model.score([p[0] for p in pairs], [p[1] for p in pairs]), range(4)))
            assert all(np.array_equal(got, batches) for got in lists)
            assert torch.get_num_threads() == threads  # the caller's setting survives


def test_predict_manifest_streams_and_writes_its_csv_atomically(checkpoint, tiny_manifest, tmp_path):
    import csv
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT, python_path, run_entry

    import siqa

    with open(tiny_manifest, newline="") as f:
        base = list(csv.DictReader(f))
    rows = [dict(base[i % len(base)], left=str(tiny_manifest.parent / base[i % len(base)]["left"]),
                 right=str(tiny_manifest.parent / base[i % len(base)]["right"]), id=i) for i in range(400)]
    manifest = tmp_path / "many.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out" / "scored.csv"
    out.parent.mkdir()
    out.write_text("the previous file\n")
    cmd = [sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(checkpoint), "--device", "cpu",
           "--manifest", str(manifest), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": "1"})
    lines = 0
    for line in proc.stdout:  # scores come out while the rows are read: streamed
        lines += not line.startswith("#")
        if lines == 5:
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=300)
    assert proc.returncode == 143
    assert out.read_text() == "the previous file\n"  # no half-file
    assert [p.name for p in out.parent.iterdir()] == ["scored.csv"]  # no temporary left

    done = run_entry("predict.py", "--checkpoint", checkpoint, "--device", "cpu", "--manifest", manifest,
                     "--out", out, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["id"] for r in got] == [str(i) for i in range(400)]
    import torch

    threads = torch.get_num_threads()  # the same arithmetic as the subprocess: one thread
    torch.set_num_threads(1)
    try:
        want = siqa.load(checkpoint, device="cpu").score_pairs([(r["left"], r["right"]) for r in rows])
    finally:
        torch.set_num_threads(threads)
    assert [float(r["prediction"]) for r in got] == list(want)
