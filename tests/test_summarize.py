"""train.splits (one split per array task) and summarize.py: the parts of a run, merged,
give the summary.json of one train.repeats=2 run on the tiny database (random and k-fold
designs), apart from the fields siqa/evaluation/merge.py names; parts of different runs are refused."""
import json
import shutil

import pytest

from conftest import make_tiny_database, run_entry, tiny_overrides
from siqa.evaluation.comparison_tables import NON_LEARNER, judgement_line

# what differs by design between a merged summary and one run's (siqa/evaluation/merge.py)
BY_DESIGN = ("wall_time_s", "config_sha256")


def comparable(summary):
    s = json.loads(json.dumps(summary))
    s.pop("merged_from", None)
    for key in BY_DESIGN:
        s["protocol"].pop(key)
    s["protocol"]["config"].pop("out_dir")
    return s


def train(manifest, work, out, *extra):
    proc = run_entry("train.py", *tiny_overrides(manifest, work, out_dir=out, **{
        "train.epochs": 1, "train.repeats": 2, "dataset.split": "[0.4,0.2,0.4]"}), *extra)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run of 2 splits, and the same run as two array tasks sharing one out_dir
    (split 1 first, as a scheduler may order them)."""
    work = tmp_path_factory.mktemp("summarize")
    manifest = make_tiny_database(work / "db", scenes=10)
    train(manifest, work, work / "one")
    task1 = train(manifest, work, work / "parts", "train.splits=[1]")
    train(manifest, work, work / "parts", "train.splits=0")
    return work, manifest, task1


def test_a_task_trains_only_its_split_into_the_full_runs_folder(runs):
    work, _, task1 = runs
    parts = work / "parts"
    assert not (parts / "summary.json").exists()
    assert "split 1 of 2 trained" in task1.stdout and "summarize.py" in task1.stdout and "--out" in task1.stdout
    assert "train.splits=[1]" not in (parts / "config.yaml").read_text()  # the whole run's
    assert (parts / "splits.json").read_bytes() == (work / "one" / "splits.json").read_bytes()
    for r in range(2):  # bit for bit what the full run wrote
        for name in ("predictions.csv",):
            assert (parts / f"split_{r}" / name).read_bytes() == \
                (work / "one" / f"split_{r}" / name).read_bytes()
        a = json.loads((parts / f"split_{r}" / "metrics.json").read_text())
        b = json.loads((work / "one" / f"split_{r}" / "metrics.json").read_text())
        assert a["test"] == b["test"] and a["val"] == b["val"]
        assert a["protocol"]["seeds"] == b["protocol"]["seeds"]
        assert a["protocol"]["config"]["train"]["splits"] == [r]


def test_merged_parts_equal_one_run(runs):
    work, _, _ = runs
    proc = run_entry("summarize.py", work / "parts")
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((work / "parts" / "summary.json").read_text())
    one = json.loads((work / "one" / "summary.json").read_text())
    assert comparable(merged) == comparable(one)
    assert merged["srocc"]["values"] == one["srocc"]["values"]  # bit for bit, not approx
    # the verdict on learning, as the one run's, recorded and said before the closing line
    assert merged["learning"] == one["learning"] and isinstance(one["learning"]["learned"], bool)
    said = proc.stdout.strip().splitlines()[-2]
    assert said == judgement_line(one["learning"], "this run"), proc.stdout
    assert said.startswith("[learned]" if one["learning"]["learned"] else NON_LEARNER), said
    assert merged["protocol"]["config"]["out_dir"] == str(work / "parts")
    assert merged["protocol"]["config"]["train"]["splits"] is None
    assert merged["merged_from"] == [str((work / "parts" / f"split_{r}").resolve()) for r in range(2)]


def test_parts_in_separate_out_dirs_merge_into_one_run_folder(runs, tmp_path):
    work, _, _ = runs
    for r in range(2):  # as two array tasks with their own out_dir would leave them
        shutil.copytree(work / "parts" / f"split_{r}", tmp_path / f"task{r}" / f"split_{r}")
        shutil.copy(work / "parts" / "splits.json", tmp_path / f"task{r}")
    alone = run_entry("summarize.py", tmp_path / "task0", tmp_path / "task1")
    assert alone.returncode == 2 and "--out" in alone.stderr
    proc = run_entry("summarize.py", tmp_path / "task1", tmp_path / "task0", "--out", tmp_path / "all")
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((tmp_path / "all" / "summary.json").read_text())
    one = json.loads((work / "one" / "summary.json").read_text())
    assert comparable(merged) == comparable(one)
    # the merged folder reads as one run
    cmp = run_entry("compare.py", work / "one", tmp_path / "all")
    assert cmp.returncode == 0, cmp.stderr


def test_parts_whose_cards_say_repeat_still_merge(runs, tmp_path):
    """Cards written before a split's index was named "index" call it "repeat": such parts
    merge into the same summary."""
    work, _, _ = runs
    shutil.copytree(work / "parts", tmp_path / "old", symlinks=False)
    (tmp_path / "old" / "summary.json").unlink(missing_ok=True)
    for r in range(2):
        path = tmp_path / "old" / f"split_{r}" / "metrics.json"
        metrics = json.loads(path.read_text())
        splits = metrics["protocol"]["splits"]
        metrics["protocol"]["splits"] = {**{k: v for k, v in splits.items() if k != "index"},
                                         "repeat": splits["index"]}
        path.write_text(json.dumps(metrics))
    proc = run_entry("summarize.py", tmp_path / "old")
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((tmp_path / "old" / "summary.json").read_text())
    one = json.loads((work / "one" / "summary.json").read_text())
    assert comparable(merged) == comparable(one) and merged["protocol"]["splits"]["index"] is None


def one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_merge_refuses_parts_of_other_runs(runs, tmp_path):
    work, _, _ = runs
    for r in range(2):
        shutil.copytree(work / "parts" / f"split_{r}", tmp_path / f"task{r}" / f"split_{r}")
        shutil.copy(work / "parts" / "splits.json", tmp_path / f"task{r}")
    # a missing split
    one_line_error(run_entry("summarize.py", tmp_path / "task0", "--out", tmp_path / "m"),
                   "split(s) 1 of 2", "train.splits=[1]")
    # another config (a learning rate)
    path = tmp_path / "task1" / "split_1" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["protocol"]["config"]["train"]["lr"] = 0.5
    path.write_text(json.dumps(metrics))
    one_line_error(run_entry("summarize.py", tmp_path / "task0", tmp_path / "task1", "--out",
                             tmp_path / "m"), "different configs", "train.lr", "task0", "task1")
    # other splits
    doc = json.loads((tmp_path / "task1" / "splits.json").read_text())
    doc["splits"][0], doc["splits"][1] = doc["splits"][1], doc["splits"][0]
    (tmp_path / "task1" / "splits.json").write_text(json.dumps(doc))
    one_line_error(run_entry("summarize.py", tmp_path / "task0", tmp_path / "task1", "--out",
                             tmp_path / "m"), "different splits", "task0", "task1")
    assert not (tmp_path / "m" / "summary.json").exists()


def test_train_refuses_splits_out_of_range_and_a_finished_split(runs, tmp_path):
    work, manifest, _ = runs
    proc = run_entry("train.py", *tiny_overrides(manifest, tmp_path, **{
        "train.repeats": 2, "dataset.split": "[0.4,0.2,0.4]", "train.splits": "[1,2]"}))
    one_line_error(proc, "train.splits=[1, 2]", "split 2 does not exist", "0..1")
    assert not (tmp_path / "run").exists()
    again = run_entry("train.py", *tiny_overrides(manifest, work, out_dir=work / "parts", **{
        "train.repeats": 2, "dataset.split": "[0.4,0.2,0.4]", "train.splits": "[0]"}))
    one_line_error(again, "split_0 already holds a run", "--resume")


@pytest.mark.parametrize("value", ["[-1]", "[1,1]", "[]", "abc", "[0.5]"])
def test_train_splits_config_values(value):
    from siqa.config import load_config
    from siqa.errors import UserError

    with pytest.raises(UserError, match="train.splits"):
        load_config(overrides=[f"train.splits={value}"])
    assert load_config(overrides=["train.splits=3"])["train"]["splits"] == [3]
    assert load_config()["train"]["splits"] is None


def test_kfold_parts_merge_with_the_pooled_out_of_fold_report(runs):
    """protocol.design=kfold, 2 folds x 1 repetition: the merged summary carries the same
    pooled report (the database read again for its pair order)."""
    work, manifest, _ = runs
    kfold = ("protocol.design=kfold", "protocol.folds=2", "train.repeats=1")
    train(manifest, work, work / "kone", *kfold)
    for r in (1, 0):
        train(manifest, work, work / "kparts", *kfold, f"train.splits=[{r}]")
    proc = run_entry("summarize.py", work / "kparts")
    assert proc.returncode == 0, proc.stderr
    assert "pooled out-of-fold, repetition 0" in proc.stdout
    merged = json.loads((work / "kparts" / "summary.json").read_text())
    one = json.loads((work / "kone" / "summary.json").read_text())
    assert merged["pooled"]["repetitions"][0]["pairs"] == 30
    assert comparable(merged) == comparable(one)


def test_resume_finishes_every_fold_of_a_kfold_run(runs):
    """A k-fold run with train.repeats=2 has repeats x folds splits: --resume after its first
    two finished trains the other two and writes the summary (it said 'finished', counting
    train.repeats splits), then says it is finished."""
    work, manifest, _ = runs
    kfold = ("protocol.design=kfold", "protocol.folds=2")
    out = work / "kresume"
    train(manifest, work, out, *kfold, "train.splits=[0,1]")
    assert not (out / "split_2").exists() and not (out / "summary.json").exists()
    proc = run_entry("train.py", "--resume", f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert "is finished" not in proc.stdout
    assert "split 3: test" in proc.stdout and "pooled out-of-fold, repetition 1" in proc.stdout
    assert all((out / f"split_{r}" / "metrics.json").is_file() for r in range(4))
    assert json.loads((out / "summary.json").read_text())["splits"] == 4
    again = run_entry("train.py", "--resume", f"out_dir={out}")
    assert again.returncode == 0 and "is finished" in again.stdout, again.stderr
    part = run_entry("train.py", "--resume", f"out_dir={out}", "train.splits=[3]")
    assert part.returncode == 0 and "is finished" in part.stdout, part.stderr
