"""The protocol card: what a reviewer needs to trust (and repeat) a result.

Every `metrics.json` and `summary.json` of a run carries it under the key "protocol":

    code        git commit of the checkout and whether its tracked files were modified
                (None when the code is not a git checkout or git is missing)
    versions    python, torch, numpy, scipy; CUDA and cuDNN when the run used CUDA
    config      the resolved configuration (no `auto` left) and config_sha256, the SHA-256
                of its canonical JSON (sorted keys, no spaces): any changed key changes it
    splits      the split file given (dataset.split_file) and the SHA-256 of its bytes, the
                SHA-256 of the split document the run used (siqa.data.splits), the hash of
                the pair list, how many splits ("count") and which one this card is of
                ("index": None in a summary; "repeat" in the cards of earlier versions)
    seeds       the split seed and the initialisation / patch-order seed of each split
    selection   how the tested checkpoint was chosen (siqa.evaluation.selection)
    logistic    the mapping fitted before PLCC/RMSE "after the logistic" (non-decreasing),
                its parameters, and whether the fit on the test set converged (or fell
                back to a straight line with a non-negative slope, or flat, and why)
    predictions the spread of the test predictions against the database's score range and
                whether they are near constant (siqa.evaluation.metrics.prediction_spread:
                a network that has not learnt, whose correlations say little)
    device      the device name and cpu_threads, torch's intra-op threads (a trained network
                moves with the arithmetic: CPU reductions split another way over another
                number of threads); wall_time_s the seconds this process spent on the split
                (on the whole run in summary.json)
"""
import hashlib
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy
import scipy

from siqa.data.splits import document_sha256, scene_table
from siqa.evaluation import selection
from siqa.evaluation.metrics import NEAR_CONSTANT_RULE
from siqa.files import sha256_file
from siqa.settings import Settings

LOGISTIC = ("q(x) = b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5 (the 5-parameter form "
            "of Sheikh et al. 2006), non-decreasing: b1, b2, b4 >= 0; one bounded least-squares fit "
            "(scipy curve_fit, trust-region reflective) from a data-driven start, no search over "
            "starts; flat when SROCC < 0; fallback: the straight line with a non-negative slope "
            "(siqa/evaluation/metrics.py)")
ROOT = Path(__file__).resolve().parents[2]  # the checkout
# torch is imported where a card needs it: summarize.py merges cards without it.


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def config_sha256(cfg) -> str:
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def git_state(folder=ROOT) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the checkout holding the code."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def versions(device=None) -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__, "scipy": scipy.__version__}
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
    return out


def device_name(device) -> str:
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


def logistic_status(test_report) -> dict:
    fit = (test_report or {}).get("logistic") or {}
    return {"function": LOGISTIC, "mapping": fit.get("kind"), "params": fit.get("params"),
            "converged": fit.get("kind") == "logistic", "reason": fit.get("reason", "")}


def spread_status(test_report) -> dict:
    """The card's "predictions": the rule and the spread of a test report (None values for a
    report without one)."""
    spread = (test_report or {}).get("spread") or {}
    return {"rule": NEAR_CONSTANT_RULE, "near_constant": spread.get("near_constant"),
            "spread": spread.get("spread"), "fraction": spread.get("fraction"),
            "score_range": spread.get("score_range")}


def card(cfg, split_info, device, started, test_reports, split=None, code=None) -> dict:
    """The protocol card (see the module docstring).

    split_info: {"file", "file_sha256", "document_sha256", "pairs_sha256", "count"};
    started: time.perf_counter() when the timed work began; test_reports: the test
    report(s) whose logistic fit is recorded; split: the split's index (None for a summary);
    code: git_state() taken when the run began (the code it imported: the checkout may
    be edited or committed to while a long run trains); None = now.
    """
    from siqa.build import model_card  # torch: summarize.py merges cards without it

    t = Settings(cfg).train
    count = split_info["count"]
    indices = range(count) if split is None else [split]
    out = {
        "code": code if code is not None else git_state(),
        "versions": versions(device),
        "config": cfg,
        "config_sha256": config_sha256(cfg),
        "splits": {**split_info, "index": split},
        "seeds": {"split": split_info.get("seed", t.seed),
                  "init_and_order": [t.seed + r for r in indices]},
        "selection": selection.RULE,
        "model": model_card(cfg),
        "device": device_name(device),
        "cpu_threads": _threads(),
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    if split is not None:
        out["logistic"] = logistic_status(test_reports[0])
        out["predictions"] = spread_status(test_reports[0])
    else:
        out["logistic"] = [logistic_status(r) for r in test_reports]
        out["predictions"] = [spread_status(r) for r in test_reports]
    return out


def split_index(card):
    """Which split a card is of (None: the whole run), read from either spelling."""
    splits = card["splits"]
    return splits["index"] if "index" in splits else splits.get("repeat")


def split_entry(splits):
    """A card's "splits" entry without the split's index, in either spelling."""
    return {k: v for k, v in splits.items() if k not in ("index", "repeat")}


def split_info(cfg, doc) -> dict:
    """The "splits" entry of the card for a run's split document."""
    path = Settings(cfg).dataset.split_file
    return {"file": path, "file_sha256": sha256_file(path) if path else None,
            "document_sha256": document_sha256(doc), "pairs_sha256": doc["pairs_sha256"],
            "count": len(doc["splits"]), "seed": doc["seed"]}


def evaluation_card(cfg, checkpoint, device, started, report, pairs) -> dict:
    """The card of `evaluate.py`: the checkpoint instead of the training splits."""
    names = "\n".join(sorted(p.name for p in pairs)).encode("utf-8")
    return {
        "code": git_state(),
        "versions": versions(device),
        "config": cfg,
        "config_sha256": config_sha256(cfg),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "evaluated": {"pairs": len(pairs), "scenes": len(scene_table(pairs)),
                      "pairs_sha256": hashlib.sha256(names).hexdigest()},
        "selection": selection.RULE + " (at training time)",
        "logistic": logistic_status(report),
        "predictions": spread_status(report),
        "device": device_name(device),
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
