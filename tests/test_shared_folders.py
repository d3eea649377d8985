"""Shared machines: one owner per run folder, leftovers of killed writes removed at the next
start (only those of dead writers), everything created readable as the umask says."""
import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, python_path, run_entry, tiny_overrides
from siqa.files import HOST, RunLock, remove_dead_temporaries, writer_tag


def dead_pid():
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_two_jobs_on_one_run_folder_the_second_is_refused(tiny_manifest, tmp_path):
    env = {**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"),
                              *tiny_overrides(tiny_manifest, tmp_path, **{"train.epochs": 3})],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in first.stdout:
        if "epoch 1/3" in line:
            break
    second = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, **{
        "train.epochs": 2, "train.nss_weight": 0, "train.seed": 5}))
    out, err = first.communicate(timeout=600)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.pid} on {HOST}" in lines[0], second.stderr
    assert "in use by train.py" in lines[0]
    assert first.returncode == 0, err
    run = tmp_path / "run"
    from siqa.checkpoint import load_checkpoint

    for name in ("best.pt", "last.pt"):  # every file is the first job's
        cfg = load_checkpoint(run / name)["config"]["train"]
        assert (cfg["epochs"], cfg["seed"]) == (3, 0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    assert metrics["best_epoch"] == load_checkpoint(run / "best.pt")["epoch"]
    assert not (tmp_path / ".run.lock").exists()  # released at exit


def test_a_held_lock_names_its_holder_and_nothing_is_written(tiny_manifest, tmp_path):
    lock = RunLock(tmp_path / "run").acquire(what="a test")
    try:
        proc = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path))
    finally:
        lock.release()
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"a test pid {os.getpid()}" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    stale = tmp_path / ".run.lock"
    stale.write_text(f"train.py pid {dead_pid()} on {HOST} since yesterday\n")
    lock = RunLock(tmp_path / "run").acquire()
    assert f"pid {os.getpid()}" in stale.read_text()
    with pytest.raises(Exception, match=f"in use by train.py pid {os.getpid()}"):
        RunLock(tmp_path / "run").acquire()  # a second owner, even in the same process
    lock.release()
    assert not stale.exists()
    RunLock(tmp_path / "run").acquire().release()


def test_leftovers_of_killed_writes_are_removed_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    (run / "split_1").mkdir(parents=True)
    (run / "config.yaml").write_text("out_dir: x\n")
    dead, alive = writer_tag(dead_pid()), writer_tag()
    leftovers = [run / f".last.pt.{dead}.abcd_123.tmp", run / "split_1" / f".best.pt.{dead}.x1y2z3q4.tmp",
                 run / ".best.pt.k2j3h4g5.tmp"]  # untagged: written before names carried the writer
    live = run / f".metrics.json.{alive}.abcdefgh.tmp"
    for path in [*leftovers, live]:
        path.write_bytes(b"half")
    proc = run_entry("train.py", f"out_dir={run}")  # refused (a run is there), after cleaning up
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert [p for p in leftovers if p.exists()] == []
    assert live.exists()  # the run lock does not cover another process's writer
    # the demo database's temporary folders, and the cache's entries, by their writers
    (tmp_path / f".demo-build-{dead}.a1b2c3d4").mkdir()
    (tmp_path / f".demo-build-{alive}.a1b2c3d4").mkdir()
    (tmp_path / ".demo-build-w1@another-host.a1b2c3d4").mkdir()
    removed = remove_dead_temporaries(tmp_path, ".demo-build-*")
    assert [p.name for p in removed] == [f".demo-build-{dead}.a1b2c3d4"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_everything_created_is_readable_as_the_umask_says(umask, tiny_manifest, tmp_path):
    """The demo database (built in a temporary folder, renamed), a run folder, the NSS cache."""
    script = f"""
import os, sys
os.umask({umask:#o})
sys.argv = ["train.py", *{tiny_overrides(tiny_manifest, tmp_path, **{"train.epochs": 1})!r}]
from siqa.data import demo
demo.ensure_demo({str(tmp_path / "data" / "demo")!r}, progress=False)
import runpy
runpy.run_path({str(ROOT / "train.py")!r}, run_name="__main__")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": python_path()}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    modes = {}
    for path in tmp_path.rglob("*"):
        kind = "dir" if path.is_dir() else "file"
        modes.setdefault((kind, stat.S_IMODE(path.stat().st_mode)), []).append(path)
    want = {("dir", 0o777 & ~umask), ("file", 0o666 & ~umask)}
    wrong = {k: [str(p) for p in v[:3]] for k, v in modes.items() if k not in want}
    assert not wrong
    assert (tmp_path / "data" / "demo" / "manifest.csv").is_file()
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "cache" / "nss").is_dir()
