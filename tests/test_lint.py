"""The code passes the project's linter (ruff, configured in pyproject.toml)."""
import subprocess
import sys
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_architecture_keeps_its_rules():
    """No import cycle, no scoring module importing training code, no function over 80 lines,
    no setting read as a subscript (scripts/architecture.py, which docs/architecture.md is
    written from)."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "architecture.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_architecture_check_finds_a_setting_read_as_a_subscript(tmp_path, monkeypatch):
    """The rule sees a read (x["train"]["epochs"]) and leaves a write and other dicts alone."""
    architecture = load_script("scripts/architecture.py")
    (tmp_path / "settings.py").write_text((ROOT / "siqa" / "settings.py").read_text())
    (tmp_path / "reader.py").write_text('def f(cfg, report):\n'
                                       '    cfg["train"]["splits"] = None\n'
                                       '    x = report["pairs"]["train"]\n'
                                       '    return cfg["train"]["epochs"] + x\n')
    monkeypatch.setattr(architecture, "PACKAGE", tmp_path)
    monkeypatch.setattr(architecture, "ROOT", tmp_path)
    assert architecture.subscript_reads() == [("reader.py", 4, "train.epochs")]
