"""--resume compares folders, not spellings: the same run folder given as an absolute path,
with a trailing slash or from another working folder is the same run, and so is an array
task's own spelling once another task has rewritten config.yaml with its own. A run records
its paths absolute, so that resumed from anywhere it writes to the same NSS cache and
TensorBoard folder; a copied run folder resumes where it lies."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import make_stereo_database, run_entry, tiny_overrides
from siqa import config
from siqa.errors import UserError
from siqa.training.launch import launch, recorded_config
from siqa.training.logbook import tensorboard_name


def _train(work, *args, cwd, **extra):
    """train.py on the work folder's database, out_dir as given in `extra` (relative to cwd)."""
    items = tiny_overrides(work / "db" / "pairs.csv", work, **{"train.epochs": 1, **extra})
    return run_entry("train.py", *items, *args, cwd=cwd)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A one-epoch run written from its work folder with relative paths (out_dir=run,
    nss.cache_dir=cache, tensorboard.dir=tb, the manifest db/pairs.csv), and a copy of it;
    progress_every tiny, so that its stderr (a pipe) has a progress line at every update:
    (work folder, the run's CompletedProcess)."""
    work = tmp_path_factory.mktemp("resume_paths")
    make_stereo_database(work / "db", scenes=3)
    proc = _train(work, cwd=work, out_dir="run", **{
        "dataset.manifest": "db/pairs.csv", "nss.cache_dir": "cache", "tensorboard.dir": "tb",
        "progress_every": 1e-9})
    assert proc.returncode == 0, proc.stderr
    shutil.copytree(work / "run", work / "copies" / "run")
    return work, proc


def test_train_py_logged_to_a_file_prints_progress_lines_every_progress_every(one_epoch):
    """train.py with stderr not a terminal: plain lines (siqa/progress.py, progress_every),
    the data's preparation and the first epoch."""
    _, proc = one_epoch
    stages = {line.split(":")[0] for line in proc.stderr.splitlines()}
    assert stages == {"NSS targets", "patches", "epoch 1/1"}, proc.stderr
    assert "\r" not in proc.stderr  # no bar redrawn in the file


def test_a_run_resumed_from_another_folder_keeps_one_cache_and_one_curve_folder(one_epoch):
    """Resumed from a sibling folder as ../run, with nothing else given: the relative paths
    the run was made with still name the folders it was made with (recorded absolute), so
    no second NSS cache or TensorBoard folder appears, and config.yaml keeps its out_dir."""
    work, _ = one_epoch
    recorded = config.load_config(work / "run" / "config.yaml")
    assert recorded["out_dir"] == str(work / "run")
    assert (recorded["nss"]["cache_dir"], recorded["tensorboard"]["dir"],
            recorded["dataset"]["manifest"]) == (str(work / "cache"), str(work / "tb"),
                                                 str(work / "db" / "pairs.csv"))
    (work / "elsewhere").mkdir()
    proc = run_entry("train.py", "--resume", "out_dir=../run", "train.epochs=2",
                     cwd=work / "elsewhere")
    assert proc.returncode == 0, proc.stderr
    assert f"resuming {work / 'run'} after epoch 1" in proc.stdout
    assert list((work / "elsewhere").iterdir()) == []  # no cache, curves or data here
    assert [p.name for p in (work / "tb").iterdir()] == [tensorboard_name(work / "run")]
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["protocol"]["resumes"][-1]["changed"] == {
        "train.epochs": [1, 2]}
    assert config.load_config(work / "run" / "config.yaml") == {
        **recorded, "train": {**recorded["train"], "epochs": 2}}


def test_resume_by_absolute_path_trailing_slash_and_from_another_folder(one_epoch):
    work, _ = one_epoch
    (work / "elsewhere").mkdir(exist_ok=True)
    for cwd, spelling in [(work, "run/"), (work, f"{work / 'run'}/"), (work / "elsewhere", "../run")]:
        proc = run_entry("train.py", "--resume", f"out_dir={spelling}", "train.epochs=2", cwd=cwd)
        assert proc.returncode == 0, (spelling, proc.stderr)
        assert f"{work / 'run'} is finished" in proc.stdout, (spelling, proc.stdout)


def test_nothing_to_resume_names_the_absolute_folder_looked_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        launch(None, ["out_dir=runs/kfold"], resume=True)
    assert str(err.value) == (f"nothing to resume in {tmp_path / 'runs' / 'kfold'} (no "
                              "config.yaml); check out_dir")


def test_a_run_recorded_with_relative_paths_reads_them_from_where_it_was_made(tmp_path, monkeypatch):
    """A config.yaml with relative paths (as runs wrote them before recording absolute
    ones): made in `made`, they are read from there (the run folder less its out_dir)
    wherever --resume runs; a run folder renamed since reads them from here."""
    run = tmp_path / "made" / "runs" / "x"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("out_dir: runs/x\nnss:\n  cache_dir: data/cache\n"
                                     "tensorboard:\n  dir: tb\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    saved = recorded_config(Path("../made/runs/x"))
    assert (saved["out_dir"], saved["nss"]["cache_dir"], saved["tensorboard"]["dir"]) == (
        str(run), str(tmp_path / "made" / "data" / "cache"), str(tmp_path / "made" / "tb"))
    renamed = tmp_path / "made" / "runs" / "y"
    run.rename(renamed)
    assert recorded_config(Path("../made/runs/y"))["nss"]["cache_dir"] == str(
        tmp_path / "elsewhere" / "data" / "cache")


def test_a_copied_run_folder_resumes_where_it_lies(one_epoch):
    """Its recorded out_dir (run) is the original's: the folder named (copies/run) is the one
    resumed, the original is left alone, and the move is recorded with the resume."""
    work, _ = one_epoch
    copy = work / "copies" / "run"
    original = (work / "run" / "config.yaml").read_bytes()
    proc = run_entry("train.py", "--resume", "out_dir=copies/run", "train.epochs=2", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming {copy} after epoch 1" in proc.stdout
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert metrics["protocol"]["resumes"][-1]["changed"]["out_dir"] == [str(work / "run"), str(copy)]
    assert config.load_config(copy / "config.yaml")["out_dir"] == str(copy)
    assert (work / "run" / "config.yaml").read_bytes() == original


def test_array_tasks_resume_with_their_own_spellings(tmp_path):
    """Task 1 rewrites config.yaml with its spelling of out_dir; task 0 then resumes with its
    own. The hint a task prints at its end is summarize.py's --out form (item 10)."""
    make_stereo_database(tmp_path / "db", scenes=3)
    task0 = _train(tmp_path, cwd=tmp_path, out_dir="run", **{"train.repeats": 2, "train.splits": "[0]"})
    assert task0.returncode == 0, task0.stderr
    assert (f"python summarize.py {tmp_path / 'run'} [the other tasks' out_dirs] --out MERGED_DIR"
            in task0.stdout)
    task1 = _train(tmp_path, cwd=tmp_path, out_dir=f"{tmp_path / 'run'}/",
                   **{"train.repeats": 2, "train.splits": "[1]"})
    assert task1.returncode == 0, task1.stderr
    assert config.load_config(tmp_path / "run" / "config.yaml")["out_dir"] == str(tmp_path / "run")
    again = _train(tmp_path, "--resume", cwd=tmp_path, out_dir="run",
                   **{"train.repeats": 2, "train.splits": "[0]"})
    assert again.returncode == 0, again.stderr
    assert "is finished" in again.stdout


def test_paths_compare_as_the_folders_they_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "m.csv").write_text("left,right,score\n")
    saved = config.load_config(overrides=["out_dir=runs/x", "dataset.name=csv", "dataset.manifest=m.csv"])
    for spelling in ("runs/x/", str(tmp_path / "runs" / "x"), "./runs/../runs/x"):
        for manifest in ("m.csv", str(tmp_path / "m.csv")):
            now = config.load_config(overrides=[f"out_dir={spelling}", "dataset.name=csv",
                                                f"dataset.manifest={manifest}"])
            assert config.resume_changes(saved, now) == {}
    moved = config.load_config(overrides=["out_dir=copy/x", "dataset.name=csv", "dataset.manifest=m.csv"])
    assert config.resume_changes(saved, moved) == {"out_dir": ["runs/x", "copy/x"]}
    other = config.load_config(overrides=["out_dir=runs/x", "dataset.name=csv", "dataset.manifest=n.csv"])
    with pytest.raises(UserError, match="dataset.manifest=n.csv differs from the recorded m.csv"):
        config.resume_changes(saved, other)
