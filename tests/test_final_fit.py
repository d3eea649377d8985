"""A final fit after k-fold: dataset.split=[1, 0, 0] trains one model on every pair for a
fixed train.epochs, with no selection (best.pt is the last epoch) and no test; it loads,
scores, resumes and extends like any run, and what cannot apply to it is refused in one line."""
import json

from conftest import run_entry, tiny_overrides


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_final_fit_on_every_pair(tiny_manifest, tmp_path):
    from siqa.checkpoint import load_checkpoint

    run = tmp_path / "run"
    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, **{"dataset.split": "[1,0,0]"}))
    assert proc.returncode == 0, proc.stderr
    assert "no validation split: best.pt is the last epoch" in proc.stdout
    assert "no test split: best.pt is epoch 2, trained on 24 pairs" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"] is None and metrics["test"] is None and metrics["best_epoch"] == 2
    assert metrics["pairs"] == {"train": 24, "val": 0, "test": 0}
    assert metrics["protocol"]["selection"] == "none: the last epoch (no validation split)"
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best["epoch"] == last["epoch"] == 2 and best["best"] == {"epoch": 2, "val": None}
    assert all(best["model"][k].equal(last["model"][k]) for k in last["model"])  # no selection
    assert len(best["split"]["train"]) == 24 and not best["split"]["val"] and not best["split"]["test"]

    import siqa  # scored like any checkpoint, and as the run folder's one model

    folder = tiny_manifest.parent
    pair = (folder / "s1_2_l.png", folder / "s1_2_r.png")
    assert siqa.load(run, device="cpu").score(*pair) == siqa.load(run / "best.pt", device="cpu").score(*pair)
    predicted = run_entry("predict.py", "--checkpoint", run, "--device", "cpu", *pair)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(f"# one model (tiny, 1 random split): the best.pt of {run}")

    one_line_error(run_entry("evaluate.py", "--checkpoint", run / "best.pt",
                             f"nss.cache_dir={tmp_path / 'cache'}"), "has no test split")
    again = run_entry("train.py", "--resume", f"out_dir={run}")
    assert again.returncode == 0 and "is finished" in again.stdout, again.stderr
    longer = run_entry("train.py", "--resume", f"out_dir={run}", "train.epochs=3")
    assert longer.returncode == 0, longer.stderr
    assert "after epoch 2" in longer.stdout and "best.pt is epoch 3" in longer.stdout
    assert load_checkpoint(run / "best.pt")["epoch"] == 3


def test_several_splits_without_a_test_are_refused(tiny_manifest, tmp_path):
    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, **{
        "dataset.split": "[0.8,0.2,0]", "train.repeats": 2}))
    one_line_error(proc, "leaves the test part empty", "train.repeats=1")
    assert not (tmp_path / "run").exists()
