"""Pairs that share view files across a split's parts are named (a researcher's report,
item 5): a manifest without `ref` was split pair by pair in silence ("21 pairs, 21 scenes"),
and byte-identical view files sat in both train and test. The run says that every pair is
its own scene, warns when train and val/test share view files (by content, as
siqa.data.overlap identifies pairs), and refuses under protocol.design=kfold."""
import pytest

from conftest import make_stereo_database, run_entry, tiny_overrides
from siqa import config
from siqa.data import load_database
from siqa.data.overlap import shared_view_files, split_content_notes
from siqa.data.splits import splits_for_run
from siqa.errors import UserError
from siqa.settings import Settings


def _notes(manifest, *overrides):
    cfg = config.load_config(overrides=["dataset.name=csv", f"dataset.manifest={manifest}", *overrides])
    pairs = load_database("csv", manifest=manifest)
    splits, _ = splits_for_run(pairs, Settings(cfg))
    return pairs, splits, split_content_notes(pairs, splits, Settings(cfg))


def test_a_manifest_without_ref_is_said_and_its_shared_views_warned(tmp_path):
    """The run's log: one note (every pair its own scene), one warning (shared view files)."""
    manifest = make_stereo_database(tmp_path / "db", scenes=3, ref=False)
    proc = run_entry("train.py", *tiny_overrides(manifest, tmp_path, **{"train.epochs": 1}))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    note = [line for line in lines if line.startswith("note:") and "no ref column" in line]
    assert len(note) == 1 and "every pair is its own scene (18 pairs, 18 scenes)" in note[0]
    warned = [line for line in lines if line.startswith("warning:") and "view files" in line]
    assert len(warned) == 1, proc.stdout
    assert "split 0 of 1 shares view files between train and val/test" in warned[0]
    assert "give them one ref in the manifest" in warned[0]


def test_kfold_refuses_shared_views_before_writing_anything(tmp_path):
    manifest = make_stereo_database(tmp_path / "db", scenes=3, ref=False)
    proc = run_entry("train.py", *tiny_overrides(manifest, tmp_path, **{
        "train.epochs": 1, "protocol.design": "kfold", "protocol.folds": 3}))
    assert proc.returncode == 2, proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: protocol.design=kfold: 3 of 3 splits share view files")
    assert not (tmp_path / "run").exists()


def test_shared_views_are_found_by_content_not_by_path(tmp_path):
    """Each scene's blur-left pair holds a byte-identical copy of the pristine right view
    (another file name), its noise-right pair the pristine left file itself: both are found."""
    manifest = make_stereo_database(tmp_path / "db", scenes=2, ref=False)
    pairs = load_database("csv", manifest=manifest)
    index = {p.name: i for i, p in enumerate(pairs)}
    pristine, copy, same = (index["s0_l.png|s0_r.png"], index["s0_blur_l.png|s0_r_copy.png"],
                            index["s0_l.png|s0_wn_r.png"])
    by_copy = shared_view_files(pairs, {"train": [copy], "val": [], "test": [pristine]})
    assert [str(f).endswith("s0_r.png") for _, _, _, f in by_copy.values()] == [True]
    by_file = shared_view_files(pairs, {"train": [same], "val": [pristine], "test": []})
    assert [(part, other.name) for _, part, other, _ in by_file.values()] == [("val", "s0_l.png|s0_r.png")]
    assert shared_view_files(pairs, {"train": [pristine], "val": [index["s1_l.png|s1_r.png"]], "test": []}) == {}


def test_with_ref_nothing_is_said_and_kfold_trains(tmp_path):
    """The same database with its ref column: scenes keep their shared views in one part."""
    manifest = make_stereo_database(tmp_path / "db", scenes=5, ref=True)
    assert _notes(manifest)[2] == []
    assert _notes(manifest, "protocol.design=kfold", "protocol.folds=5", "train.repeats=2")[2] == []


def test_without_ref_kfold_is_refused_and_random_warned(tmp_path):
    manifest = make_stereo_database(tmp_path / "db", scenes=3, ref=False)
    pairs, splits, lines = _notes(manifest, "train.repeats=3")
    assert len(lines) == 2 and lines[0].startswith("note:") and lines[1].startswith("warning:")
    with pytest.raises(UserError, match="protocol.design=kfold"):
        _notes(manifest, "protocol.design=kfold", "protocol.folds=3")
