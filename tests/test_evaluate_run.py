"""evaluate.py RUN_DIR: every tested split of a run folder scored as evaluate.py scores its
best.pt, and the run's summary of them, with a k-fold run's pooled out-of-fold report: the
numbers of the run's own summary.json (on the CPU with the run's threads, bit for bit)."""
import pytest

from conftest import tiny_overrides
from siqa import config as config_mod
from siqa.evaluation.comparison_tables import per_distortion_lines
from siqa.evaluation.evaluate import evaluate_run
from siqa.evaluation.reports import SUMMARY_KEYS, pooled_line
from siqa.files import read_json
from siqa.training import run as runner
from siqa.training.distributed import Dist


@pytest.fixture(scope="module")
def kfold_run(tiny_manifest, tmp_path_factory, one_torch_thread):
    """One repetition of 2 folds, 1 epoch: (run folder, its log lines)."""
    work = tmp_path_factory.mktemp("evaluate_run")
    cfg = config_mod.load_config(overrides=tiny_overrides(tiny_manifest, work, **{
        "protocol.design": "kfold", "protocol.folds": 2, "train.epochs": 1,
        "train.keep_last": False}))
    lines = []
    runner.train(cfg, dist=Dist(), progress=False, log=lines.append)
    return work / "run", lines


def test_a_kfold_run_folder_gives_the_numbers_of_its_summary(kfold_run, process_numerics):
    run, run_log = kfold_run
    lines = []
    summary = evaluate_run(run, progress=False, log=lines.append)
    written = run / "eval_csv_test"
    assert read_json(written / "summary.json") == summary
    own = read_json(run / "summary.json")
    for key in SUMMARY_KEYS:  # median, spread and values over the folds: the run's own
        assert summary[key] == own[key], key
    assert summary["pooled"] == own["pooled"]  # every pooled metric, interval, per distortion
    assert summary["evaluated"] == [str(run / "split_0"), str(run / "split_1")]
    for r in range(2):  # each fold's own evaluation, beside its best.pt
        fold = read_json(run / f"split_{r}" / "eval_csv_test" / "metrics.json")
        assert fold["test"]["srocc"] == read_json(run / f"split_{r}" / "metrics.json")["test"]["srocc"]
    names = [line.split(":")[0] for line in lines[:-2]]  # each fold's lines (and warnings)
    assert names == sorted(names) and set(names) == {"split_0", "split_1"}
    pooled = pooled_line(own["pooled"]["repetitions"][0])
    assert pooled in run_log and lines[-1] == pooled
    assert lines[-2].startswith(f"2 splits of {run}: SROCC median ")
    for png in (run / "scatter.png", written / "scatter.png"):  # the pooled predictions, drawn
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_run_ends_with_its_per_distortion_table(kfold_run):
    """The run's last lines: the pooled line, the per-distortion table (the numbers of
    summary.json's per_distortion, which are the pooled report's per distortion), the epochs
    of a final fit, the verdict."""
    run, run_log = kfold_run
    own = read_json(run / "summary.json")
    table = own["per_distortion"]
    assert table["source"] == "the pooled out-of-fold predictions of 2 folds x 1 repetition"
    pooled = own["pooled"]["repetitions"][0]["per_distortion"]
    assert set(table["groups"]) == set(pooled) == {"blur", "wn"}
    for kind, cell in table["groups"].items():  # the same pairs, summed in another order
        assert cell["pairs"] == pooled[kind]["n"]
        assert cell["srocc"] == pytest.approx(pooled[kind]["srocc"], rel=1e-12)
        assert cell["rmse"] == pytest.approx(pooled[kind]["rmse"], rel=1e-12)
    lines = per_distortion_lines(table)
    assert run_log[-2 - len(lines):-2] == lines
    assert lines[0] == f"per distortion ({table['source']}):"
    assert lines[1].split() == ["distortion", "pairs", "SROCC", "PLCC", "RMSE"]
    blur = table["groups"]["blur"]
    assert lines[2].split() == ["blur", str(blur["pairs"]), f"{blur['srocc']:.4f}",
                                f"{blur['plcc']:.4f}", f"{blur['rmse']:.3f}"]


def test_a_split_not_tested_yet_is_left_out_and_named(kfold_run, process_numerics, tmp_path):
    """A run folder whose split 1 has no metrics.json yet: split 0 alone, no pooled report
    (a repetition's folds are not all there), and the summary says which split is missing."""
    import shutil

    run, _ = kfold_run
    part = tmp_path / "part"
    shutil.copytree(run / "split_0", part / "split_0", ignore=shutil.ignore_patterns("eval_*"))
    (part / "split_1").mkdir()
    shutil.copy(run / "splits.json", part / "splits.json")
    lines = []
    summary = evaluate_run(part, out=tmp_path / "ev", progress=False, log=lines.append)
    assert summary["left_out"] == ["split_1"] and "pooled" not in summary
    assert summary["srocc"]["values"] == [read_json(run / "summary.json")["srocc"]["values"][0]]
    assert (tmp_path / "ev" / "split_0" / "metrics.json").is_file()
    assert lines[-1].endswith("(split_1 not tested yet: left out)")
