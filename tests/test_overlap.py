"""Train/test identity by content (siqa/data/overlap.py): evaluate.py never scores a pair the
checkpoint trained or validated on, however the database's path is spelled."""
import json
import os

import pytest

from conftest import run_entry
from siqa.checkpoint import load_checkpoint, save_checkpoint


def test_evaluate_recognises_its_database_by_a_relative_manifest_path(checkpoint, tiny_manifest,
                                                                      tmp_path):
    """evaluate.py: the run was given an absolute manifest path; the same manifest by a
    relative path is the same database, not 'another database' with all its pairs scored."""
    cwd = tiny_manifest.parent.parent
    relative = os.path.relpath(tiny_manifest, cwd)
    proc = run_entry("evaluate.py", "--checkpoint", checkpoint, f"dataset.manifest={relative}",
                     "--out", tmp_path / "ev", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    want = json.loads((checkpoint.parent / "metrics.json").read_text())["test"]
    assert set(got) >= {"test"} and got["test"]["n"] == want["n"] < 24
    assert got["test"]["srocc"] == pytest.approx(want["srocc"], rel=1e-9, abs=1e-12)


def test_split_all_is_refused_on_a_database_with_training_pairs(checkpoint, tiny_manifest, tmp_path):
    proc = run_entry("evaluate.py", "--checkpoint", checkpoint, "--split", "all",
                     "--out", tmp_path / "ev")
    assert proc.returncode == 2 and "training or validation pairs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--split test" in proc.stderr
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("identity", ["name", "content"])
def test_the_demo_is_its_database_with_root_null_or_data_demo(checkpoint, tmp_path, identity):
    """The demo: the checkpoint stores `root: null`, the user passes
    `data/demo`; both are the same 372 pairs. A demo checkpoint is made from the tiny run's
    weights and a content split of the demo (as old, name-only, or with content hashes)."""
    from siqa.data import load_database
    from siqa.data.demo import ensure_demo
    from siqa.data.splits import content_splits

    ensure_demo(tmp_path / "data" / "demo", progress=False)
    pairs = load_database("demo", root=tmp_path / "data" / "demo")
    split = content_splits(pairs)[0]
    state = load_checkpoint(checkpoint)
    state["config"]["dataset"].update(name="demo", root=None, manifest=None)
    by_part = {part: [pairs[i] for i in split[part]] for part in split}
    state["split"] = {part: [p.name for p in ps] for part, ps in by_part.items()}
    state.pop("pair_sha256", None)
    if identity == "content":
        from siqa.data.overlap import split_identities

        state["pair_sha256"] = split_identities(by_part)
    save_checkpoint(tmp_path / "demo.pt", state)
    n_test = len(split["test"])
    assert n_test < len(pairs)

    ev = run_entry("evaluate.py", "--checkpoint", tmp_path / "demo.pt", "dataset.root=data/demo",
                   "--out", tmp_path / "ev", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]["n"] == n_test

    mx = run_entry("evaluate.py", "--matrix", "--checkpoint", tmp_path / "demo.pt",
                   "--test", "demo=data/demo", "--out", tmp_path / "mx", cwd=tmp_path)
    assert mx.returncode == 0, mx.stderr
    (cell,) = json.loads((tmp_path / "mx" / "matrix.json").read_text())["cells"]
    assert cell["split"] == "checkpoint test split" and cell["n"] == n_test and cell["mark"] == "*"


def test_selection_by_content_ignores_names_and_scores(tiny_manifest):
    """Unit level: renamed pairs with other scores are the same pairs; another image is not."""
    import dataclasses

    from siqa.data import load_database
    from siqa.data.overlap import evaluation_pairs, split_identities

    pairs = load_database("csv", manifest=tiny_manifest)
    parts = {"train": pairs[:12], "val": pairs[12:18], "test": pairs[18:]}
    state = {"split": {k: [p.name for p in v] for k, v in parts.items()},
             "pair_sha256": split_identities(parts)}
    renamed = [dataclasses.replace(p, name=f"x/{i}", score=-p.score) for i, p in enumerate(pairs)]
    own = evaluation_pairs(renamed, state, "test")
    assert own.split == "test" and [p.name for p in own.pairs] == [f"x/{i}" for i in range(18, 24)]
    assert own.dropped == 18 and own.mark == "*"
    swapped = [dataclasses.replace(p, left=p.right, right=p.left) for p in pairs[:12]]
    other = evaluation_pairs(swapped, state, "test")  # views swapped: other content
    assert other.split == "all" and len(other.pairs) == 12 and other.mark == ""
    some = evaluation_pairs(pairs[10:20], state, "test")
    assert some.split == "all less seen" and [p.name for p in some.pairs] == state["split"]["test"][:2]
    assert some.dropped == 8 and some.mark == "+"
    with pytest.raises(Exception, match="--split test"):
        evaluation_pairs(pairs[10:20], state, "all")
