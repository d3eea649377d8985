"""The run folder's layout and state (siqa/runfolder.py), on folders made by hand: the
names a user sees, where a run of one split and a run of several keep a split's files, and
the decisions train.py, evaluate.py and siqa.load take from them (finished, extendable,
tested members, a folder a new run would write over)."""
import json

import pytest

from siqa.errors import UserError
from siqa.runfolder import RunFolder, SplitFolder, split_index, split_name


def touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_tested(split, epochs):
    touch(split.best)
    touch(split.metrics, json.dumps({"epochs": epochs}))


def split_document(count):
    return json.dumps({"format": "siqa-splits/1", "pairs_sha256": "0", "scenes": [], "ratios": [],
                       "splits": [{"train": [], "val": [], "test": []}] * count})


def test_the_layout_a_user_sees(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert [p.name for p in (run.config, run.splits_file, run.summary, run.scatter)] == [
        "config.yaml", "splits.json", "summary.json", "scatter.png"]
    split = run.split(3, count=5)
    assert split.path == tmp_path / "run" / "split_3"
    assert [p.name for p in (split.best, split.last, split.best_backup, split.metrics, split.predictions)] == [
        "best.pt", "last.pt", ".best-at-last.pt", "metrics.json", "predictions.csv"]
    assert run.split(0, count=1).path == run.path  # a run of one split is its own split folder
    assert split.evaluation("live", "test").name == "eval_live_test"
    assert [split_index(split_name(7)), split_index("split_x"), split_index("splits")] == [7, None, None]


def test_finished_and_extendable(tmp_path):
    split = SplitFolder(tmp_path)
    assert not split.finished(3, saved_epoch=lambda path: 3)  # nothing tested
    write_tested(split, epochs=3)
    touch(split.last)
    assert split.finished(3, saved_epoch=lambda path: 3)
    assert not split.finished(5, saved_epoch=lambda path: 3)  # --resume train.epochs=5 extends it
    split.check_extendable(5)
    split.last.unlink()  # train.keep_last=false: the epochs its metrics.json records
    assert split.finished(3, saved_epoch=None) and not split.finished(5, saved_epoch=None)
    with pytest.raises(UserError, match=r"train.epochs=5: .* was tested after 3 epochs and its last.pt deleted"):
        split.check_extendable(5)


def test_a_run_of_several_is_finished_once_its_summary_is_written(tmp_path):
    run = RunFolder(tmp_path)
    touch(run.splits_file, split_document(2))
    assert run.split_count() == 2
    for r in range(2):
        write_tested(run.split(r, 2), epochs=2)
    assert not run.finished([0, 1], 2, 2, saved_epoch=None, whole=True)
    assert run.finished([1], 2, 2, saved_epoch=None, whole=False)  # a part of the run (train.splits)
    touch(run.summary)
    assert run.finished([0, 1], 2, 2, saved_epoch=None, whole=True)


def test_members_are_the_tested_splits_in_split_order(tmp_path):
    run = RunFolder(tmp_path)
    for r in (10, 2):
        write_tested(run.split_folder(r), epochs=1)
    touch(run.split_folder(3).last)  # not tested yet
    assert run.members() == ([run.split_folder(2).path, run.split_folder(10).path], ["split_3"])
    touch(run.splits_file, split_document(3))  # splits.json names the splits
    assert run.members() == ([run.split_folder(2).path], ["split_0", "split_1"])


def test_a_new_run_is_refused_where_it_would_write_over_one(tmp_path):
    run = RunFolder(tmp_path)
    assert run.occupied() is None and run.occupied([0, 1]) is None
    touch(run.split_folder(1).metrics)
    assert run.occupied() is None and run.occupied([0]) is None
    assert run.occupied([0, 1]) == run.split_folder(1).path
    touch(run.config)  # array tasks share config.yaml: only a whole run is refused by it
    assert run.occupied() == run.path and run.occupied([0]) is None
