"""Benchmark of the data stage: demo database build, and patch extraction for a
LIVE-Phase-I-sized database (365 synthetic pairs of 640x360 views written as BMP files).

Each stage runs in its own child process so that its peak resident memory
(resource.getrusage ru_maxrss) is its own; the peak of Python-level allocations
(tracemalloc, which sees numpy but not torch buffers) is reported too.

    python benchmarks/data.py            # both stages
    python benchmarks/data.py --stage patches --pairs 365
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def stage_demo(args):
    from siqa.data.demo import ensure_demo

    with tempfile.TemporaryDirectory() as tmp:
        tracemalloc.start()
        t = time.perf_counter()
        root = ensure_demo(Path(tmp) / "demo", progress=False)
        seconds = time.perf_counter() - t
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        n = sum(1 for _ in open(root / "manifest.csv")) - 1
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return dict(stage="demo build", pairs=n, seconds=round(seconds, 2), disk_mib=round(size / 2**20, 1),
                tracemalloc_peak_mib=round(traced / 2**20, 1), peak_rss_mib=round(_peak_rss_mib(), 1))


def stage_patches(args):
    import numpy as np
    import torch
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    from siqa.data.patches import extract_patch_set
    from siqa.data.records import StereoPair
    from siqa.data.validate import validate_pairs

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = []
        t = time.perf_counter()
        for i in range(args.pairs):
            base = gaussian_filter(rng.standard_normal((360, 640 + 8)), 3) * 400 + 128
            for eye, shift in (("l", 0), ("r", 8)):
                view = np.clip(base[:, shift : shift + 640], 0, 255).astype(np.uint8)
                Image.fromarray(view).save(tmp / f"im{i}_{eye}.bmp")
            pairs.append(StereoPair(f"im{i}", tmp / f"im{i}_l.bmp", tmp / f"im{i}_r.bmp", 1.0, False,
                                    f"s{i % 20}", "wn", True))
        write_s = time.perf_counter() - t
        rss_before = _peak_rss_mib()
        t = time.perf_counter()
        sizes = validate_pairs(pairs)
        validate_s = time.perf_counter() - t
        tracemalloc.start()
        t = time.perf_counter()
        ps = extract_patch_set(pairs, progress=False, sizes=sizes)
        seconds = time.perf_counter() - t
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        tensor_mib = (ps.left.nbytes + ps.right.nbytes + ps.pair_index.nbytes) / 2**20
    return dict(stage="patch extraction", pairs=args.pairs, patches=len(ps), torch_threads=torch.get_num_threads(),
                write_files_s=round(write_s, 1), validate_s=round(validate_s, 2), seconds=round(seconds, 2),
                patch_tensors_mib=round(tensor_mib, 1), tracemalloc_peak_mib=round(traced / 2**20, 1),
                peak_rss_before_mib=round(rss_before, 1), peak_rss_mib=round(_peak_rss_mib(), 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["demo", "patches", "all"], default="all")
    ap.add_argument("--pairs", type=int, default=365)
    args = ap.parse_args()
    if args.stage == "all":
        print(f"machine: {os.cpu_count()} CPU core(s), python {sys.version.split()[0]}")
        for stage in ("demo", "patches"):
            out = subprocess.run([sys.executable, __file__, "--stage", stage, "--pairs", str(args.pairs)],
                                 check=True, capture_output=True, text=True, cwd=ROOT)
            print(out.stdout.strip())
        return
    result = stage_demo(args) if args.stage == "demo" else stage_patches(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
