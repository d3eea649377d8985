"""Messages that said the wrong thing (a researcher's report, item 10): summarize.py's hint
after one task of several, evaluate.py on a summary.json ("is corrupt"), the no-effect
refusal's context (train.optimizer=sgd named beside a manifest), "1 scenes"."""
import json
import shutil

import pytest

from conftest import run_entry
from siqa.data.splits import scene_counts
from siqa.errors import UserError, counted
from siqa.evaluation.reports import pooled_line, split_log_lines


def test_a_part_of_a_run_prints_summarize_py_s_out_form():
    """Tasks with their own out_dir cannot merge with `summarize.py <one task's folder>`."""
    from siqa.training.run import merge_hint

    hint = merge_hint([3], 10, "runs/live1_task3")
    assert hint.startswith("split 3 of 10 trained")
    assert ("python summarize.py runs/live1_task3 [the other tasks' out_dirs] --out MERGED_DIR"
            in hint)
    assert merge_hint([3, 7], 10, "runs/x").startswith("splits 3, 7 of 10 trained")


def test_evaluate_on_a_summary_json_says_it_is_not_a_checkpoint(tmp_path, checkpoint):
    run = tmp_path / "run"
    (run / "split_0").mkdir(parents=True)
    shutil.copy(checkpoint, run / "split_0" / "best.pt")
    (run / "summary.json").write_text(json.dumps({"splits": 2, "srocc": {"median": 0.5}}))
    proc = run_entry("evaluate.py", "--checkpoint", run / "summary.json")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {run / 'summary.json'} is not a checkpoint but a JSON file: give "
        f"{run / 'split_0' / 'best.pt'}"]


@pytest.mark.parametrize("content,kind", [(b"left,right,score\n", "a text file"),
                                         (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "an image")])
def test_other_files_given_as_a_checkpoint_are_named(tmp_path, content, kind):
    from siqa.checkpoint import load_checkpoint

    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(UserError, match=f"x.pt is not a checkpoint but {kind}: give the best.pt"):
        load_checkpoint(tmp_path / "x.pt")


def test_counts_agree_with_their_nouns():
    assert [counted(n, "scene") for n in (0, 1, 2)] == ["0 scenes", "1 scene", "2 scenes"]
    assert counted(1, "entry", "entries") == "1 entry" and counted(3, "entry", "entries") == "3 entries"
    test = {"srocc": 0.5, "plcc": 0.5, "krocc": 0.4, "rmse": 3.0}
    line = split_log_lines({"test": test, "pairs": {"test": 1}, "scenes": {"test": 1}, "best_epoch": 2})[0]
    assert line.startswith("test (1 pair, 1 scene, best epoch 2)")
    line = pooled_line({**test, "repetition": 0, "pairs": 3, "scenes": 1})
    assert "(3 pairs, 1 scene)" in line
    with pytest.raises(UserError, match="the database has 1 scene, 3 splits need"):
        scene_counts(1)
