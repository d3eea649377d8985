"""Split files: the shipped canonical files, reading them back, and their checks."""
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from siqa.config import load_config
from siqa.data import canonical_splits as canon
from siqa.data.records import StereoPair
from siqa.data.splits import (
    SPLITS,
    content_splits,
    read_split_file,
    split_document,
    splits_for_run,
    splits_from_document,
    write_split_file,
)
from siqa.errors import UserError
from siqa.settings import Settings

SHIPPED = Path(__file__).resolve().parent.parent / "splits"
METADATA = canon.find_metadata()
needs_metadata = pytest.mark.skipif(
    METADATA is None, reason="the real metadata (shared/reference/database_metadata) is absent")


def shipped(name):
    return json.loads((SHIPPED / f"{name}.json").read_text())


def stand_in_pairs(scene_table):
    """Pairs with the scene ids and counts of a split file (for seed reproducibility)."""
    return [StereoPair(f"{s}/{k}", Path("x"), None, 1.0, False, s, "wn")
            for s, info in scene_table.items() for k in range(info["pairs"])]


@pytest.mark.parametrize("name", canon.DATABASES)
def test_shipped_files_are_content_disjoint_and_reproducible_from_their_seed(name):
    doc = read_split_file(SHIPPED / f"{name}.json")
    assert doc["database"] == name and doc["seed"] == 0 and doc["ratios"] == [0.6, 0.2, 0.2]
    assert len(doc["splits"]) == 10
    scenes = set(doc["scenes"])
    for split in doc["splits"]:
        parts = [set(split[k]) for k in SPLITS]
        assert all(parts)
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        assert parts[0] | parts[1] | parts[2] == scenes
    pairs = stand_in_pairs(doc["scenes"])
    again = content_splits(pairs, ratios=doc["ratios"], seed=doc["seed"], repeats=10)
    regenerated = split_document(pairs, again, name, doc["seed"], doc["ratios"])
    assert regenerated["splits"] == doc["splits"] and doc["design"] == "balanced-test/2"
    # no split twice, every scene tested at least once, the rounding's remainder in test
    assert len({json.dumps(sp, sort_keys=True) for sp in doc["splits"]}) == 10
    assert {s for sp in doc["splits"] for s in sp["test"]} == scenes
    sizes = {(len(sp["train"]), len(sp["val"]), len(sp["test"])) for sp in doc["splits"]}
    assert sizes == {{20: (12, 4, 4), 8: (5, 1, 2), 6: (4, 1, 1), 10: (6, 2, 2)}[len(scenes)]}


@needs_metadata
@pytest.mark.parametrize("name", canon.DATABASES)
def test_shipped_files_cover_every_scene_of_the_real_metadata(name):
    pairs = canon.database_pairs(name, METADATA)
    doc = shipped(name)
    assert set(doc["scenes"]) == {p.content for p in pairs}
    assert doc["pairs"] == len(pairs) == {"live3d_phase1": 365, "live3d_phase2": 360,
                                          "waterloo3d_phase1": 330, "waterloo3d_phase2": 460}[name]
    assert len(doc["scenes"]) == {"live3d_phase1": 20, "live3d_phase2": 8,
                                  "waterloo3d_phase1": 6, "waterloo3d_phase2": 10}[name]
    assert canon.canonical_document(name, METADATA) == doc  # byte-for-byte the same content


@needs_metadata
def test_live_scene_ids_are_the_loaders_and_pair_order_is_a_seeded_runs():
    pairs = canon.database_pairs("live3d_phase1", METADATA)
    assert pairs[0].content == "im2" and pairs[0].name == "jp2k/im2_1.bmp"
    from_file = splits_from_document(pairs, shipped("live3d_phase1"), "live3d_phase1.json")
    seeded = content_splits(pairs, seed=0, repeats=10)
    for a, b in zip(from_file, seeded):
        for part in SPLITS:
            assert np.array_equal(a[part], b[part])  # same pairs, same order


@needs_metadata
@pytest.mark.parametrize("name", ["waterloo3d_phase1", "waterloo3d_phase2"])
def test_waterloo_names_match_the_loader_once_it_reads_the_csv(name):
    from siqa.data.databases import load_database

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(METADATA / canon.WATERLOO_FILES[name], Path(tmp) / "MOS.csv")
        try:
            pairs = load_database(name, root=tmp, validate=False)
        except UserError as err:
            pytest.skip(f"this loader does not read the header-less CSV yet ({err})")
    assert split_document(pairs, [], name, 0, [0.6, 0.2, 0.2])["pairs_sha256"] == \
        shipped(name)["pairs_sha256"]


def toy_pairs():
    return [StereoPair(f"{s}_{k}.png", Path("x"), None, float(k), False, s, "wn")
            for k in range(4) for s in ("a", "b", "c", "d", "e")]  # scenes interleaved


def test_run_document_round_trip_and_split_file_key(tmp_path):
    pairs = toy_pairs()
    cfg = load_config(overrides=["dataset.name=csv", "dataset.split_seed=5", "train.repeats=3"])
    splits, doc = splits_for_run(pairs, Settings(cfg))
    write_split_file(tmp_path / "splits.json", doc)
    assert read_split_file(tmp_path / "splits.json") == doc
    cfg2 = load_config(overrides=["dataset.name=csv", "train.seed=99", "train.repeats=2",
                                  f"dataset.split_file={tmp_path / 'splits.json'}"])
    again, doc2 = splits_for_run(pairs, Settings(cfg2))
    assert len(again) == 2 and doc2["splits"] == doc["splits"][:2] and doc2["seed"] == 5
    for a, b in zip(again, splits):
        for part in SPLITS:
            assert np.array_equal(a[part], b[part])
    cfg3 = load_config(overrides=["dataset.name=csv", "train.repeats=4",
                                  f"dataset.split_file={tmp_path / 'splits.json'}"])
    with pytest.raises(UserError, match="holds 3 split"):
        splits_for_run(pairs, Settings(cfg3))


def test_a_file_of_another_database_names_the_file_and_the_scene(tmp_path):
    pairs = toy_pairs()
    doc = split_document(pairs, content_splits(pairs, seed=0), "csv", 0, [0.6, 0.2, 0.2])
    renamed = [p if p.name != "c_2.png" else StereoPair("c_9.png", p.left, None, p.score,
                                                         False, "c", "wn") for p in pairs]
    with pytest.raises(UserError, match=r"splits\.json.*scene 'c'"):
        splits_from_document(renamed, doc, "splits.json")
    without_e = [p for p in pairs if p.content != "e"]
    with pytest.raises(UserError, match=r"splits\.json.*scene 'e' of the file is not in the database"):
        splits_from_document(without_e, doc, "splits.json")
    extra = pairs + [StereoPair("f_0.png", Path("x"), None, 1.0, False, "f", "wn")]
    with pytest.raises(UserError, match="scene 'f' of the database is not in the file"):
        splits_from_document(extra, doc, "splits.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        read_split_file(tmp_path / "bad.json")
    with pytest.raises(UserError, match="split file not found"):
        read_split_file(tmp_path / "none.json")


def test_train_with_a_split_file_of_another_database_stops_before_writing(tiny_manifest, tmp_path):
    from conftest import run_entry, tiny_overrides

    proc = run_entry("train.py", *tiny_overrides(
        tiny_manifest, tmp_path, **{"dataset.split_file": SHIPPED / "live3d_phase1.json"}))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: split file") and "live3d_phase1.json" in proc.stderr
    assert "scene 'im10'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
