"""The smaller findings of issue 22: TensorBoard folders, several pairs on predict.py."""
from pathlib import Path

import pytest

from conftest import run_entry


def test_tensorboard_folders_differ_for_runs_with_the_same_last_component(tmp_path, monkeypatch):
    from siqa.training.logbook import tensorboard_name

    a, b = tensorboard_name(tmp_path / "a" / "exp"), tensorboard_name(tmp_path / "b" / "exp")
    assert a != b and a.startswith("exp-") and b.startswith("exp-")
    monkeypatch.chdir(tmp_path)  # the same run named from another working directory
    assert tensorboard_name(Path("a") / "exp") == a
    assert tensorboard_name(tmp_path / "b" / ".." / "a" / "exp") == a


def test_predict_scores_several_pairs_as_each_alone(checkpoint, tiny_manifest):
    folder = tiny_manifest.parent
    one = [folder / "s0_1_l.png", folder / "s0_1_r.png"]
    two = [folder / "s3_2_l.png", folder / "s3_2_r.png"]
    both = run_entry("predict.py", "--checkpoint", checkpoint, *one, *two)
    assert both.returncode == 0, both.stderr
    lines = [line for line in both.stdout.splitlines() if not line.startswith("#")]
    alone = [run_entry("predict.py", "--checkpoint", checkpoint, *pair) for pair in (one, two)]
    scores = [float(p.stdout.strip().splitlines()[-1].split("\t")[-1]) for p in alone]
    assert len(lines) == 2 and lines[0].startswith(str(one[0])) and lines[1].startswith(str(two[0]))
    assert [float(line.split("\t")[-1]) for line in lines] == pytest.approx(scores, abs=1e-6)
    odd = run_entry("predict.py", "--checkpoint", checkpoint, *one, two[0])
    assert odd.returncode == 2 and "in pairs" in odd.stderr


def test_a_run_folder_as_checkpoint_points_at_its_best_pt(checkpoint, tmp_path):
    proc = run_entry("evaluate.py", "--checkpoint", checkpoint.parent, "--out", tmp_path / "ev")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "is a folder" in proc.stderr and str(checkpoint) in proc.stderr
