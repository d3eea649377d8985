"""The two steps of benchmarks/gpu_check.py that run inside a subprocess of their own (so
that the check's clock and signal handler stay in charge), as commands:

    python benchmarks/gpu_check_steps.py nss DEVICE N key=value ...
        the NSS targets of the first N pairs of the database the overrides name, on the CPU
        and on DEVICE (batched); prints `RESULT {json}` with the largest difference and the
        pairs per second of each
    python benchmarks/gpu_check_steps.py prepare DEVICE key=value ...
        the database the overrides name and its cached NSS targets, computed on DEVICE, as a
        run prepares them; prints `RESULT <pairs>`
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from siqa import config  # noqa: E402
from siqa.data import load_database_from_config  # noqa: E402
from siqa.settings import Settings


def nss_parity(device, n, overrides):
    import torch

    from siqa.nss.cache import read_pair
    from siqa.nss.features import nss_features_batch

    pairs = load_database_from_config(Settings(config.load_config(overrides=overrides)))[:n]
    views = [read_pair(p.left, p.right) for p in pairs]
    lefts, rights = [v[0] for v in views], [v[1] for v in views]
    nss_features_batch(lefts[:1], rights[:1], device=device)  # warm-up
    started = time.perf_counter()
    cpu = nss_features_batch(lefts, rights, device="cpu")
    cpu_s = time.perf_counter() - started
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    on_device = nss_features_batch(lefts, rights, device=device)
    device_s = time.perf_counter() - started
    return {"pairs": n, "view": list(lefts[0].shape[::-1]), "max_abs_diff": float(abs(on_device - cpu).max()),
            "cpu_pairs_per_s": n / cpu_s, "device_pairs_per_s": n / device_s}


def prepare(device, overrides):
    from siqa.data.nss import nss_from_config

    settings = Settings(config.load_config(overrides=overrides))
    pairs = load_database_from_config(settings)
    nss_from_config(pairs, settings, progress=False, device=device)
    return len(pairs)


def main(argv):
    step, device, *rest = argv
    if step == "nss":
        print("RESULT " + json.dumps(nss_parity(device, int(rest[0]), rest[1:])))
    elif step == "prepare":
        print(f"RESULT {prepare(device, rest)}")
    else:
        raise SystemExit(f"unknown step {step!r}: nss or prepare")


if __name__ == "__main__":
    main(sys.argv[1:])
