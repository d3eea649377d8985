"""Time the NSS targets per 640x360 stereo pair: this project vs plain numpy/scipy vs original.

Pairs: centre crops (640x360) of the stereodemo OAK-D pairs, plus JPEG-compressed and noisy
copies. Timed in the same run, interleaved pair by pair so that all variants see the same
machine load:
- project, CPU, one pair per call (`nss_features`);
- project, CPU, one pair per call, the NSS version-1 definition (censor_k=0: uncensored
  fit), to show what the censored fit of version 2 costs;
- project, CPU, all pairs of the run in one batched call (`nss_features_batch`), per pair;
- project, CUDA, batched (when a GPU is present);
- numpy/scipy: the default mode (mle0) written plainly (dtcwt package + the censored fit by
  scipy.optimize, gamma.fit(floc=0) where nothing is censored + scipy cdf/ppf),
  tests/nss_reference.py; and the same with censor_k=0 (version 1, gamma.fit(floc=0) only);
- original: dtcwt + free-loc gamma.fit (slow: on --original-pairs pairs only).
Prints medians per pair and ratios, and the largest difference to the numpy/scipy values.

    python benchmarks/nss.py [--pairs 12] [--threads 1] [--original-pairs 2]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import nss_reference as ref  # noqa: E402

from siqa.nss import nss_features, nss_features_batch  # noqa: E402


def make_pairs(count):
    scenes = ref.stereodemo_scenes()
    kinds = ["pristine", "jpeg", "noise"]
    pairs = []
    for i in range(count):
        scene, kind = scenes[i % len(scenes)], kinds[i % len(kinds)]
        left, right = ref.natural_pair(scene, 640, 360)
        pairs.append((f"{scene}/{kind}", ref.distort(left, kind, 2 * i), ref.distort(right, kind, 2 * i + 1)))
    return pairs


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=12, help="number of 640x360 pairs (default 12)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: one CPU core)")
    p.add_argument("--original-pairs", type=int, default=2,
                   help="pairs for the slow original pipeline (default 2; 0 skips it)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.pairs)
    cuda = torch.cuda.is_available()

    # warm-up (first calls load libraries and allocate)
    nss_features(pairs[0][1], pairs[0][2])
    ref.nss_reference(pairs[0][1], pairs[0][2], "mle0")

    times = {"project CPU single": [], "project v1 (uncensored)": [], "numpy/scipy mle0": [],
             "numpy/scipy v1": [], "original free-loc": []}
    worst = 0.0
    for i, (name, left, right) in enumerate(pairs):
        t_ours, ours = timed(lambda: nss_features(left, right))
        t_old, _ = timed(lambda: nss_features(left, right, censor_k=0.0))
        t_ref, expected = timed(lambda: ref.nss_reference(left, right, "mle0"))
        t_ref1, _ = timed(lambda: ref.nss_reference(left, right, "mle0", censor_k=0.0))
        times["project CPU single"].append(t_ours)
        times["project v1 (uncensored)"].append(t_old)
        times["numpy/scipy mle0"].append(t_ref)
        times["numpy/scipy v1"].append(t_ref1)
        worst = max(worst, float(np.max(np.abs(ours - expected) / np.maximum(1, np.abs(expected)))))
        if i < args.original_pairs:
            t_orig, _ = timed(lambda: ref.nss_reference(left, right, "scipy_free_loc"))
            times["original free-loc"].append(t_orig)
        print(f"  {name:24s} project {t_ours * 1e3:7.1f} ms (v1 {t_old * 1e3:6.1f})   numpy/scipy "
              f"{t_ref * 1e3:7.1f} ms (v1 {t_ref1 * 1e3:6.1f})", flush=True)

    t_batch, batch = timed(lambda: nss_features_batch([q[1] for q in pairs], [q[2] for q in pairs]))
    times["project CPU batched"] = [t_batch / len(pairs)]
    single = np.stack([nss_features(q[1], q[2]) for q in pairs])
    batch_diff = float(np.max(np.abs(batch - single)))
    if cuda:
        nss_features_batch([pairs[0][1]], [pairs[0][2]], device="cuda")
        torch.cuda.synchronize()
        t_gpu, gpu = timed(lambda: nss_features_batch([q[1] for q in pairs], [q[2] for q in pairs], device="cuda"))
        times["project CUDA batched"] = [t_gpu / len(pairs)]
        gpu_diff = float(np.max(np.abs(gpu - single) / np.maximum(1, np.abs(single))))

    print(f"\nNSS targets per 640x360 pair, median over pairs; torch threads {args.threads}, "
          f"{len(pairs)} pairs ({'CUDA: ' + torch.cuda.get_device_name() if cuda else 'no CUDA'})")
    med = {k: statistics.median(v) for k, v in times.items() if v}
    for k, v in med.items():
        n = len(times[k]) if "batched" not in k else len(pairs)
        print(f"  {k:22s} {v * 1e3:9.1f} ms  ({n} pairs)")
    base = med["project CPU single"]
    print(f"  numpy/scipy mle0 / project CPU single   = {med['numpy/scipy mle0'] / base:6.1f}x (target >= 3)")
    print(f"  numpy/scipy v1 / project CPU single     = {med['numpy/scipy v1'] / base:6.1f}x "
          f"(version-2 project against the version-1 plain implementation)")
    print(f"  project CPU single / project v1         = {base / med['project v1 (uncensored)']:6.2f}x "
          f"(cost of the censored fit)")
    if "original free-loc" in med:
        print(f"  original free-loc / project CPU single  = {med['original free-loc'] / base:6.1f}x (target >= 50)")
    print(f"  numpy/scipy mle0 / project CPU batched  = {med['numpy/scipy mle0'] / med['project CPU batched']:6.1f}x")
    if cuda:
        ratio = med['numpy/scipy mle0'] / med['project CUDA batched']
        print(f"  numpy/scipy mle0 / project CUDA batched = {ratio:6.1f}x"
              f"   (CUDA vs CPU max rel diff {gpu_diff:.2e})")
    print(f"  max |project - numpy/scipy| / max(1, |ref|) over all values: {worst:.2e}; "
          f"batched vs single max diff {batch_diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
