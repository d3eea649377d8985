"""How the censored Gamma fit of the NSS targets depends on its threshold delta = k x RMS.

For each k, and for stereo pairs built from the stereodemo views (640x360 centre crops, as
tests/nss_reference.py reads them): natural, JPEG quality 5 / 10 / 20 / 30, Gaussian blur
(sigma 2) and 15 % saturated pixels (both views), prints
- a1, scale1: the fitted shape and scale of the right view's level-1 subband 0 (float64);
- cens1: the fraction of level-1 magnitudes below delta (right view, all orientations);
- gap: max over the 108 targets of |float32 - float64| / max(1, |float64|), the targets
  with the standardisation and the DT-CWT in float32 against float64 (round-off only);
- drift: max over the 108 targets of |t(k) - t(K_REF)| / max(1, |t(K_REF)|), how far the
  targets move from those at the reference k (real coefficients censored, or round-off kept).
k = 0 is the uncensored definition of NSS version 1 (magnitudes floored at 1e-12).
A good k: gap far below 1e-4 on every pair, and drift small on pairs without flat areas.

    python benchmarks/nss_sensitivity.py [--scene stairs] [--threads 1]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import nss_reference as ref  # noqa: E402

from siqa.nss.features import CENSOR_K, nss_features, subband_magnitudes  # noqa: E402

KS = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def make_pairs(scene):
    left, right = ref.natural_pair(scene, 640, 360)
    pairs = {"natural": (left, right)}
    for q in (5, 10, 20, 30):
        pairs[f"jpeg q{q}"] = (ref.jpeg(left, q), ref.jpeg(right, q))
    pairs["blur"] = (ref.distort(left, "blur"), ref.distort(right, "blur"))
    pairs["saturated 15%"] = (ref.saturate(left), ref.saturate(right))
    return pairs


def censored_fraction(right, k):
    mags = subband_magnitudes(torch.from_numpy(right)[None])[0][0]  # (6, P) level 1
    rms = torch.sqrt((mags ** 2).mean(dim=1, keepdim=True))
    return float((mags < k * rms).double().mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", default="stairs", help="stereodemo scene (default stairs)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.scene)
    print(f"scene {args.scene}, 640x360; reference k for drift: {CENSOR_K:g}; a1/scale1: right "
          f"view, level-1 subband 0, float64")
    summary = {}
    for name, (left, right) in pairs.items():
        base = nss_features(left, right, censor_k=CENSOR_K)
        print(f"\n{name}\n  {'k':>7s} {'a1':>8s} {'scale1':>8s} {'cens1':>8s} {'gap':>9s} {'drift':>9s}")
        for k in KS:
            t64 = nss_features(left, right, censor_k=k)
            t32 = nss_features(left, right, standardise_dtype="float32", censor_k=k)
            gap = float(np.max(np.abs(t32 - t64) / np.maximum(1.0, np.abs(t64))))
            drift = float(np.max(np.abs(t64 - base) / np.maximum(1.0, np.abs(base))))
            summary.setdefault(k, []).append((gap, drift))
            print(f"  {k:7.0e} {t64[0]:8.4f} {t64[18]:8.4f} {censored_fraction(right, k):8.4f} "
                  f"{gap:9.2e} {drift:9.2e}", flush=True)
    print("\nover all pairs: k, largest gap, largest drift")
    for k, rows in summary.items():
        print(f"  {k:7.0e} {max(r[0] for r in rows):9.2e} {max(r[1] for r in rows):9.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
