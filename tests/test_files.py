"""Atomic writes: whole files or none, with the permissions open() would give them."""
import stat
import subprocess
import sys

from conftest import ROOT
from siqa.files import atomic_write


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_the_mode_open_gives_not_mkstemps_0600(tmp_path):
    atomic_write(tmp_path / "atomic.json", b"{}")
    (tmp_path / "plain.json").write_bytes(b"{}")  # the reference: open() under this umask
    assert mode(tmp_path / "atomic.json") == mode(tmp_path / "plain.json")
    assert (tmp_path / "atomic.json").read_bytes() == b"{}"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_the_mode_follows_the_umask_of_the_process(tmp_path):
    script = ("import os, sys; os.umask(0o027); sys.path.insert(0, sys.argv[1]); "
              "from siqa.files import atomic_write; atomic_write(sys.argv[2], b'x')")
    subprocess.run([sys.executable, "-c", script, str(ROOT), str(tmp_path / "f")], check=True)
    assert mode(tmp_path / "f") == 0o640


def test_a_runs_outputs_get_the_ordinary_mode(tiny_run):
    work, _ = tiny_run
    (work / "reference").write_bytes(b"")
    for name in ("metrics.json", "predictions.csv", "best.pt", "last.pt", "config.yaml"):
        assert mode(work / "run" / name) == mode(work / "reference"), name
