"""docs/usage.md#your-own-database, followed as written on a generated database: its three
commands, with the manifest and run folder put in a temporary folder and the run shortened
to 2 epochs (the test adds only what keeps it short and its outputs inside the folder)."""
import re

from conftest import ROOT, make_tiny_database, run_entry


def documented_commands():
    text = (ROOT / "docs" / "usage.md").read_text()
    section = text.split("## Your own database", 1)[1].split("\n## ", 1)[0]
    return [line.strip().split()[1:] for line in section.splitlines()
            if line.startswith("    python ")]


def test_the_documented_commands_run_on_a_database_of_ones_own(tmp_path):
    commands = documented_commands()
    assert [c[0] for c in commands] == ["train.py", "evaluate.py", "predict.py"]
    manifest = make_tiny_database(tmp_path / "mine")  # mine/pairs.csv in the docs
    (tmp_path / "mine" / "manifest.csv").rename(tmp_path / "mine" / "pairs.csv")
    quick = ["train.epochs=2", f"nss.cache_dir={tmp_path / 'cache'}", "nss.workers=1",
             f"tensorboard.dir={tmp_path / 'tb'}", "train.threads=1"]
    outputs = []
    for script, *args in commands:
        extra = quick if script == "train.py" else []
        proc = run_entry(script, *args, *extra, cwd=tmp_path)
        assert proc.returncode == 0, (script, proc.stderr[-2000:])
        outputs.append(proc.stdout)
    assert re.match(r"profile short on csv, model bourbia2021, device \S+, step eager, float32: "
                    r"train\.epochs=2 \(paper: 500\); "
                    r"patches\.normalisation=contrast \(paper: reference\)", outputs[0])
    assert (tmp_path / "runs" / "mine-short" / "best.pt").is_file()
    assert (tmp_path / "runs" / "mine-short" / "scored.csv").read_text().count("\n") == 25
    assert manifest.parent == tmp_path / "mine"
