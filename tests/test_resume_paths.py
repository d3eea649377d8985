"""--resume compares folders, not spellings (a researcher's report, item 4): the same run
folder given as an absolute path, with a trailing slash or from another working folder was
refused ("differs from the recorded ..."), and so was an array task's own spelling once
another task had rewritten config.yaml with its own. A copied run folder resumes where it
lies."""
import json
import shutil

import pytest

from conftest import make_stereo_database, run_entry, tiny_overrides
from siqa import config
from siqa.errors import UserError


def _train(work, *args, cwd, **extra):
    """train.py on the work folder's database, out_dir as given in `extra` (relative to cwd)."""
    items = tiny_overrides(work / "db" / "pairs.csv", work, **{"train.epochs": 1, **extra})
    return run_entry("train.py", *items, *args, cwd=cwd)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A one-epoch run written with out_dir=run from its work folder, and a copy of it."""
    work = tmp_path_factory.mktemp("resume_paths")
    make_stereo_database(work / "db", scenes=3)
    proc = _train(work, cwd=work, out_dir="run")
    assert proc.returncode == 0, proc.stderr
    shutil.copytree(work / "run", work / "copies" / "run")
    return work


def test_resume_by_absolute_path_trailing_slash_and_from_another_folder(one_epoch):
    work = one_epoch
    absolute = _train(work, "--resume", cwd=work, out_dir=work / "run", **{"train.epochs": 2})
    assert absolute.returncode == 0, absolute.stderr
    assert "resuming" in absolute.stdout and "after epoch 1" in absolute.stdout
    assert json.loads((work / "run" / "metrics.json").read_text())["epochs"] == 2
    (work / "elsewhere").mkdir()
    for cwd, spelling in [(work, "run/"), (work, f"{work / 'run'}/"), (work / "elsewhere", "../run")]:
        proc = _train(work, "--resume", cwd=cwd, out_dir=spelling, **{"train.epochs": 2})
        assert proc.returncode == 0, (spelling, proc.stderr)
        assert "is finished" in proc.stdout, (spelling, proc.stdout)


def test_a_copied_run_folder_resumes_where_it_lies(one_epoch):
    """Its recorded out_dir (run) is the original's: the folder named (copies/run) is the one
    resumed, the original is left alone, and the move is recorded with the resume."""
    work = one_epoch
    copy = work / "copies" / "run"
    original = (work / "run" / "config.yaml").read_bytes()
    proc = _train(work, "--resume", cwd=work, out_dir="copies/run", **{"train.epochs": 2})
    assert proc.returncode == 0, proc.stderr
    assert "resuming copies/run after epoch 1" in proc.stdout
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert metrics["protocol"]["resumes"][-1]["changed"]["out_dir"] == ["run", "copies/run"]
    assert config.load_config(copy / "config.yaml")["out_dir"] == "copies/run"
    assert (work / "run" / "config.yaml").read_bytes() == original


def test_array_tasks_resume_with_their_own_spellings(tmp_path):
    """Task 1 rewrites config.yaml with its spelling of out_dir; task 0 then resumes with its
    own. The hint a task prints at its end is summarize.py's --out form (item 10)."""
    make_stereo_database(tmp_path / "db", scenes=3)
    task0 = _train(tmp_path, cwd=tmp_path, out_dir="run", **{"train.repeats": 2, "train.splits": "[0]"})
    assert task0.returncode == 0, task0.stderr
    assert "python summarize.py run [the other tasks' out_dirs] --out MERGED_DIR" in task0.stdout
    task1 = _train(tmp_path, cwd=tmp_path, out_dir=f"{tmp_path / 'run'}/",
                   **{"train.repeats": 2, "train.splits": "[1]"})
    assert task1.returncode == 0, task1.stderr
    assert config.load_config(tmp_path / "run" / "config.yaml")["out_dir"] == f"{tmp_path / 'run'}/"
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
