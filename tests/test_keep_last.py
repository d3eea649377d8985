"""train.keep_last=false: a split's last.pt is deleted once the split is tested (its
metrics.json written); --resume then knows the split is finished from its metrics.json, skips
it, and still resumes the splits that were not; the numbers are those of a run that kept
every last.pt."""
import hashlib
import json
import signal
import sys

import pytest
from test_preemption import interrupted

from conftest import ROOT, run_entry, tiny_overrides

EXTRA = {"protocol.design": "kfold", "protocol.folds": 3, "train.epochs": 2,
         "train.batch_size": 16}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_results(split):
    """metrics.json less the protocol card (out_dir, wall time), predictions.csv, best.pt's weights."""
    import torch

    from siqa.checkpoint import load_checkpoint

    metrics = json.loads((split / "metrics.json").read_text())
    metrics.pop("protocol")
    weights = load_checkpoint(split / "best.pt")["model"]
    return metrics, (split / "predictions.csv").read_text(), {k: v.to(torch.float64) for k, v in weights.items()}


@pytest.fixture(scope="module")
def kept(tiny_manifest, tmp_path_factory):
    """The same k-fold run with the default train.keep_last=true, uninterrupted."""
    work = tmp_path_factory.mktemp("kept")
    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, work, **EXTRA))
    assert proc.returncode == 0, proc.stderr
    return work / "run"


def test_keep_last_true_keeps_every_last_pt(kept):
    for r in range(3):
        assert (kept / f"split_{r}" / "last.pt").is_file()
        assert (kept / f"split_{r}" / "best.pt").is_file()


def test_keep_last_false_deletes_tested_last_pt_and_resume_skips_finished_splits(
        tiny_manifest, tmp_path, kept):
    """Stopped by SIGTERM in split 1's second epoch: split 0 is tested (no last.pt), split 1
    holds last.pt of epoch 1, split 2 has not started. --resume skips split 0 (its files
    untouched), resumes split 1 after epoch 1 and trains split 2; every split ends as in the
    run that kept last.pt, without a last.pt. A second --resume says the run is finished;
    a larger train.epochs is refused in one line (there is no last.pt to continue)."""
    from siqa.checkpoint import load_checkpoint

    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"),
           *tiny_overrides(tiny_manifest, tmp_path, **EXTRA, **{"train.keep_last": "false"})]
    rc, out, err = interrupted(cmd, signal.SIGTERM, "split 1: epoch 1/2")
    assert rc == 143, err
    split0, split1, split2 = (run / f"split_{r}" for r in range(3))
    assert (split0 / "metrics.json").is_file() and (split0 / "best.pt").is_file()
    assert not (split0 / "last.pt").exists()  # tested: deleted
    assert not (split1 / "metrics.json").exists()
    assert load_checkpoint(split1 / "last.pt")["epoch"] == 1  # not finished: kept
    before = {name: sha(split0 / name) for name in ("best.pt", "metrics.json", "predictions.csv")}

    resumed = run_entry("train.py", "--resume", f"out_dir={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert "split 0: epoch" not in resumed.stdout  # skipped: finished, known from metrics.json
    assert "split 1: resuming" in resumed.stdout and "after epoch 1" in resumed.stdout
    assert "split 2: epoch 2/2" in resumed.stdout
    assert {name: sha(split0 / name) for name in before} == before
    for r, split in enumerate((split0, split1, split2)):
        assert not (split / "last.pt").exists() and (split / "best.pt").is_file()
        got, want = split_results(split), split_results(kept / f"split_{r}")
        assert got[0] == want[0] and got[1] == want[1]
        for key in want[2]:
            assert got[2][key].equal(want[2][key]), (r, key)
    assert (run / "summary.json").is_file()
    assert not list(run.rglob("*.tmp")) and not list(run.rglob(".best*"))

    again = run_entry("train.py", "--resume", f"out_dir={run}")
    assert again.returncode == 0, again.stderr
    assert "is finished" in again.stdout

    longer = run_entry("train.py", "--resume", f"out_dir={run}", "train.epochs=3")
    assert longer.returncode == 2
    lines = longer.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in longer.stderr, longer.stderr
    assert "keep_last=false" in lines[0] and "cannot be continued" in lines[0]
    assert {name: sha(split0 / name) for name in before} == before  # nothing touched
