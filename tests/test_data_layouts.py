"""Miniature copies of each official database layout load to the right records."""
import csv

import numpy as np
import pytest
import scipy.io
from PIL import Image

from siqa.data import DATABASES, load_database, load_database_from_config
from siqa.errors import UserError
from siqa.imageio import read_views
from siqa.settings import Settings

W, H = 40, 36  # a view; the smallest sizes that still give one patch are 33x33


def view(value, seed):
    """A grey view whose mean is about `value` (left views bright, right views dark)."""
    rng = np.random.default_rng(seed)
    return np.clip(value + rng.integers(-10, 11, size=(H, W)), 0, 255).astype(np.uint8)


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def cell(strings, shape):
    out = np.empty(shape, dtype=object)
    for i, s in enumerate(strings):
        out.flat[i] = s
    return out


# ---------------------------------------------------------------- LIVE 3D Phase I
LIVE1 = [  # (official name, reference, dmos); scene ids not contiguous
    ("jp2k\\im2_1.bmp", "refimgs\\im2.bmp", 12.5),
    ("jp2k\\im3_2.bmp", "refimgs\\im3.bmp", 30.25),
    ("blur\\im2_1.bmp", "refimgs\\im2.bmp", -3.0),
    ("ff\\im7_4.bmp", "refimgs\\im7.bmp", 55.0),
    ("wn\\im7_1.bmp", "refimgs\\im7.bmp", 44.0),
]


def make_live1(root):
    for i, (name, ref, _) in enumerate(LIVE1):
        stem = name.replace("\\", "/")[:-4]
        save(root / f"{stem}_l.bmp", view(200, i))
        save(root / f"{stem}_r.bmp", view(50, 100 + i))
    for ref in {r for _, r, _ in LIVE1}:
        stem = ref.replace("\\", "/")[:-4]
        save(root / f"{stem}_l.bmp", view(200, 7))
        save(root / f"{stem}_r.bmp", view(50, 8))
    n = len(LIVE1)
    scipy.io.savemat(
        root / "data.mat",
        {
            "img_names": cell([x[0] for x in LIVE1], (1, n)),
            "ref_names": cell([x[1] for x in LIVE1], (1, n)),
            "dmos": np.array([[x[2]] for x in LIVE1]),
        },
    )


def test_live3d_phase1(tmp_path):
    make_live1(tmp_path)
    pairs = load_database("live3d_phase1", root=tmp_path)
    assert len(pairs) == len(LIVE1)
    assert [p.score for p in pairs] == [x[2] for x in LIVE1]
    assert [p.content for p in pairs] == ["im2", "im3", "im2", "im7", "im7"]
    assert [p.distortion for p in pairs] == ["jp2k", "jp2k", "blur", "ff", "wn"]
    assert all(p.symmetric is True and p.higher_is_better is False for p in pairs)
    assert pairs[0].name == "jp2k/im2_1.bmp"
    assert pairs[3].left == tmp_path / "ff" / "im7_4_l.bmp"
    assert pairs[3].right == tmp_path / "ff" / "im7_4_r.bmp"
    lv, rv = read_views(pairs[1].left, pairs[1].right)
    assert lv.mean() > 150 and rv.mean() < 100  # not swapped


def test_live3d_phase1_authors_folder_names(tmp_path):
    """The authors' copy renamed blur -> gblur, ff -> fastfading: still found."""
    make_live1(tmp_path)
    (tmp_path / "blur").rename(tmp_path / "gblur")
    (tmp_path / "ff").rename(tmp_path / "fastfading")
    pairs = load_database("live3d_phase1", root=tmp_path)
    assert pairs[2].left == tmp_path / "gblur" / "im2_1_l.bmp"
    assert pairs[3].distortion == "ff"


def test_live3d_phase1_missing_variable(tmp_path):
    make_live1(tmp_path)
    scipy.io.savemat(tmp_path / "data.mat", {"img_names": cell(["jp2k\\im2_1.bmp"], (1, 1)), "dmos": np.ones((1, 1))})
    with pytest.raises(UserError, match=r"ref_names.*data\.mat"):
        load_database("live3d_phase1", root=tmp_path)


def test_missing_database_folder(tmp_path):
    with pytest.raises(UserError, match="database folder not found.*nowhere"):
        load_database("live3d_phase1", root=tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"3DDmosRelease\.mat"):
        load_database("live3d_phase2", root=tmp_path)


# ---------------------------------------------------------------- LIVE 3D Phase II
LIVE2 = [  # (stimulus, reference, dmos)
    ("003image_1_4.bmp", "003image_0_0.bmp", 40.0),
    ("003image_2_1.bmp", "003image_0_0.bmp", 35.5),
    ("010image_3_9.bmp", "010image_0_0.bmp", 70.0),
    ("010image_4_6.bmp", "010image_0_0.bmp", 50.0),
    ("010image_5_7.bmp", "010image_0_0.bmp", 60.0),
]


def make_live2(root):
    for i, (stim, ref, _) in enumerate(LIVE2):
        save(root / "Stimuli" / stim, np.hstack([view(200, i), view(50, 50 + i)]))
    for ref in {r for _, r, _ in LIVE2}:
        save(root / "Reference" / ref, np.hstack([view(200, 1), view(50, 2)]))
    n = len(LIVE2)
    scipy.io.savemat(
        root / "3DDmosRelease.mat",
        {
            "Dmos": np.array([[x[2]] for x in LIVE2]),
            "RefFilename": cell([x[1] for x in LIVE2], (n, 1)),
            "StiFilename": cell([x[0] for x in LIVE2], (n, 1)),
        },
    )


def test_live3d_phase2(tmp_path):
    make_live2(tmp_path)
    pairs = load_database("live3d_phase2", root=tmp_path)
    assert len(pairs) == 5
    assert [p.score for p in pairs] == [40.0, 35.5, 70.0, 50.0, 60.0]
    assert [p.distortion for p in pairs] == ["wn", "jp2k", "jpeg", "blur", "ff"]
    assert [p.symmetric for p in pairs] == [True, False, True, False, True]
    assert [p.content for p in pairs] == ["003image_0_0"] * 2 + ["010image_0_0"] * 3
    assert all(p.right is None and p.left.parent.name == "Stimuli" for p in pairs)
    lv, rv = read_views(pairs[2].left, pairs[2].right)
    assert lv.shape == (H, W) and lv.mean() > 150 and rv.mean() < 100


def test_live3d_phase2_bad_name(tmp_path):
    make_live2(tmp_path)
    scipy.io.savemat(
        tmp_path / "3DDmosRelease.mat",
        {"Dmos": np.ones((1, 1)), "RefFilename": cell(["a.bmp"], (1, 1)), "StiFilename": cell(["weird.bmp"], (1, 1))},
    )
    with pytest.raises(UserError, match="weird.bmp"):
        load_database("live3d_phase2", root=tmp_path)


# ---------------------------------------------------------------- Waterloo-IVC 3D
WATERLOO = [  # (session, name, reference, type, mos3d, mosl, mosr)
    ("session1", "N0001", "N0001", "Reference", 90.0, 91.0, 89.0),
    ("session1", "N0002", "N0001", "WN", 40.0, 45.0, 38.0),
    ("session1", "N0003", "N0001", "Blur", 60.5, 70.0, 92.0),
    ("session2", "N0004", "N0004", "Reference", 88.0, 87.0, 86.0),
    ("session2", "N0005", "N0004", "JPEG", 30.0, 31.0, 29.0),
]


def make_waterloo(root, with_type=True):
    for i, (session, name, *_rest) in enumerate(WATERLOO):
        save(root / session / f"{name}.png", np.hstack([view(200, i), view(50, 70 + i)]))
    header = ["Image Name", "Reference", "MOS 3D", "MOS_left", "mos Right"]
    if with_type:
        header.insert(3, "Distortion Type")
    rows = []
    for session, name, ref, kind, m3, ml, mr in WATERLOO:
        row = [name, ref, m3, ml, mr]
        if with_type:
            row.insert(3, kind)
        rows.append(row)
    return header, rows


def test_waterloo_xlsx(tmp_path):
    import openpyxl

    header, rows = make_waterloo(tmp_path)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Waterloo-IVC 3D image quality database"])  # a title row above the header
    ws.append(header)
    for r in rows:
        ws.append(r)
    wb.save(tmp_path / "MOS.xlsx")
    pairs = load_database("waterloo3d_phase1", root=tmp_path)
    assert len(pairs) == 5
    assert [p.score for p in pairs] == [90.0, 40.0, 60.5, 88.0, 30.0]
    assert [p.view_scores for p in pairs] == [(ml, mr) for *_, ml, mr in WATERLOO]  # multiscore's targets
    assert [p.distortion for p in pairs] == ["pristine", "wn", "blur", "pristine", "jpeg"]
    assert [p.symmetric for p in pairs] == [True, None, None, True, None]  # no levels, no blocks
    assert [p.content for p in pairs] == ["N0001"] * 3 + ["N0004"] * 2
    assert all(p.higher_is_better for p in pairs)
    assert pairs[4].left == tmp_path / "session2" / "N0005.png"
    # the left/right-view MOS columns: multiscore's per-view targets
    assert [p.view_scores for p in pairs] == [row[5:7] for row in WATERLOO]
    lv, rv = read_views(pairs[4].left, None)
    assert lv.mean() > 150 and rv.mean() < 100


def test_waterloo_short_table_without_type_is_refused(tmp_path):
    """Without distortion columns the structure comes from block positions: a table that is
    not 10 blocks of 46 rows is refused rather than mislabelled."""
    header, rows = make_waterloo(tmp_path, with_type=False)
    with open(tmp_path / "MOS.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    with pytest.raises(UserError, match=r"MOS\.csv.*Phase II cannot be inferred.*N0001: 3, N0004: 2 rows"
                                        r".*10 references x 46 rows"):
        load_database("waterloo3d_phase2", root=tmp_path)


# One Phase II block (46 rows), written out by hand: offset 0 pristine; 1-12 symmetric
# (3 types x 4 levels); 13-24 one view distorted; 25-33 one type at two levels (3 x 3);
# 34-45 two types.
PHASE2_BLOCK = (["pristine"] + ["type1"] * 4 + ["type2"] * 4 + ["type3"] * 4
                + ["type1"] * 4 + ["type2"] * 4 + ["type3"] * 4
                + ["type1"] * 3 + ["type2"] * 3 + ["type3"] * 3 + ["mixed"] * 12)


def write_phase2_table(root, header):
    """A Phase II-shaped table (10 references x 46 rows), images in 3D/Session3DIQ/."""
    rows = []
    for scene in range(10):
        ref = f"N{46 * scene + 1:04d}"
        for offset in range(46):
            rows.append([f"N{46 * scene + offset + 1:04d}", ref, 90.0 - offset, 80.0, 70.0])
    image = np.hstack([view(200, 1), view(50, 2)])
    save(root / "3D" / "Session3DIQ" / "N0001.png", image)
    data = (root / "3D" / "Session3DIQ" / "N0001.png").read_bytes()
    for row in rows[1:]:
        (root / "3D" / "Session3DIQ" / f"{row[0]}.png").write_bytes(data)
    with open(root / "MOS.csv", "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return rows


@pytest.mark.parametrize("header", [None, ["Name", "Reference", "3D MOS", "Left MOS", "Right MOS"]])
def test_waterloo_structure_from_block_positions(tmp_path, header):
    rows = write_phase2_table(tmp_path, header)
    pairs = load_database("waterloo3d_phase2", root=tmp_path)
    assert len(pairs) == 460 and len({p.content for p in pairs}) == 10
    assert [p.distortion for p in pairs] == PHASE2_BLOCK * 10
    assert [p.symmetric for p in pairs] == ([True] * 13 + [False] * 33) * 10
    assert [p.score for p in pairs] == [r[2] for r in rows]
    assert all(p.view_scores == (80.0, 70.0) for p in pairs)  # header-less: columns 4 and 5
    assert pairs[47].content == "N0047" and pairs[47].name == "N0048.png"
    assert pairs[47].left == tmp_path / "3D" / "Session3DIQ" / "N0048.png"
    with pytest.raises(UserError, match=r"Phase I cannot be inferred.*dataset\.name=waterloo3d_phase2"):
        load_database("waterloo3d_phase1", root=tmp_path)


def test_waterloo_per_view_mos_empty_or_not_a_number(tmp_path):
    header, rows = make_waterloo(tmp_path)
    rows[1][4], rows[2][5] = "", "n/a"  # N0002 without its left-view MOS; N0003's right one bad
    with open(tmp_path / "MOS.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows[:2]])
    pairs = load_database("waterloo3d_phase1", root=tmp_path)
    assert [p.view_scores for p in pairs] == [(91.0, 89.0), None]
    with open(tmp_path / "MOS.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    with pytest.raises(UserError, match=r"MOS\.csv row 4: left/right-view MOS '70\.0', 'n/a'"):
        load_database("waterloo3d_phase1", root=tmp_path)


def test_waterloo_headerless_needs_five_columns(tmp_path):
    (tmp_path / "MOS.csv").write_text("N0001,N0001,95.6\nN0002,N0001,61.3\n")
    with pytest.raises(UserError, match=r"MOS\.csv.*'N0001', 'N0001', '95\.6'.*header-less 5 columns"):
        load_database("waterloo3d_phase1", root=tmp_path)


def test_waterloo_missing_columns(tmp_path):
    import openpyxl

    make_waterloo(tmp_path)
    wb = openpyxl.Workbook()
    wb.active.append(["Image Name", "Score"])
    wb.active.append(["N0001", 3.0])
    wb.save(tmp_path / "MOS.xlsx")
    with pytest.raises(UserError, match=r"MOS\.xlsx.*reference, MOS 3D.*'Image Name', 'Score'"):
        load_database("waterloo3d_phase1", root=tmp_path)


# ---------------------------------------------------------------- CSV manifests
def test_csv_separate_and_sbs(tmp_path):
    save(tmp_path / "img" / "a_l.png", view(200, 1))
    save(tmp_path / "img" / "a_r.png", view(50, 2))
    save(tmp_path / "img" / "b.png", np.hstack([view(200, 3), view(50, 4)]))
    (tmp_path / "two.csv").write_text(
        "left,right,score,ref,distortion,symmetric\nimg/a_l.png,img/a_r.png,1.5,s1,blur,false\n"
    )
    (tmp_path / "sbs.csv").write_text("sbs,score\nimg/b.png,77\n")
    (p,) = load_database("csv", manifest=tmp_path / "two.csv")
    assert (p.left, p.right, p.score, p.content, p.distortion, p.symmetric) == (
        tmp_path / "img" / "a_l.png", tmp_path / "img" / "a_r.png", 1.5, "s1", "blur", False,
    )
    (q,) = load_database("csv", manifest=tmp_path / "sbs.csv")
    assert q.right is None and q.score == 77.0 and q.content == "img/b.png" and q.symmetric is None
    lv, rv = read_views(q.left, q.right)
    assert lv.mean() > 150 and rv.mean() < 100


def test_csv_bad_columns_and_score(tmp_path):
    (tmp_path / "m.csv").write_text("image,mos\nx.png,3\n")
    with pytest.raises(UserError, match=r"m\.csv.*left,right,score.*image, mos"):
        load_database("csv", manifest=tmp_path / "m.csv")
    (tmp_path / "n.csv").write_text("sbs,score\nx.png,abc\n")
    with pytest.raises(UserError, match=r"n\.csv row 2.*'abc'"):
        load_database("csv", manifest=tmp_path / "n.csv")


def test_csv_per_view_score_columns(tmp_path):
    """left_score,right_score: both or neither; a row may leave both empty (no view scores);
    the values as written (the score column's convention)."""
    for name, value in (("a_l", 200), ("a_r", 50), ("b_l", 190), ("b_r", 60)):
        save(tmp_path / f"{name}.png", view(value, 1))
    head = "left,right,score,ref,left_score,right_score\n"
    (tmp_path / "v.csv").write_text(head + "a_l.png,a_r.png,40,s1,35.5,47\n"
                                           "b_l.png,b_r.png,41,s2,,\n")
    p, q = load_database("csv", manifest=tmp_path / "v.csv")
    assert p.view_scores == (35.5, 47.0) and q.view_scores is None
    assert (p.score, p.content, q.score) == (40.0, "s1", 41.0)
    cases = {  # manifest text -> what the one line names
        "left,right,score,left_score\na_l.png,a_r.png,40,35\n": ("left_score", "no right_score"),
        head + "a_l.png,a_r.png,40,s1,35,\n": ("row 2", "right_score is empty"),
        head + "a_l.png,a_r.png,40,s1,abc,3\n": ("row 2", "left_score 'abc'"),
        head + "a_l.png,a_r.png,40,s1,3,inf\n": ("row 2", "right_score 'inf'", "finite"),
    }
    for k, (text, names) in enumerate(cases.items()):
        (tmp_path / f"bad{k}.csv").write_text(text)
        with pytest.raises(UserError) as err:
            load_database("csv", manifest=tmp_path / f"bad{k}.csv")
        assert f"bad{k}.csv" in str(err.value) and all(n in str(err.value) for n in names), err.value


def test_unknown_database_lists_valid_names():
    with pytest.raises(UserError) as err:
        load_database("live3d_phase3")
    for name in DATABASES:
        assert name in str(err.value)


def test_config_keys(tmp_path):
    make_live1(tmp_path)
    from siqa.config import load_config

    cfg = load_config(overrides=["dataset.name=live3d_phase1", f"dataset.root={tmp_path}"])
    pairs = load_database_from_config(Settings(cfg))
    assert len(pairs) == len(LIVE1)


# ---------------------------------------------------------------- a new layout
def load_toy(root):
    """A layout added as a new one is: this loader (its file) and one line in DATABASES.
    `root`/scores.txt holds one pair a line: left view, right view, DMOS, scene."""
    from siqa.data.databases.common import require_dir
    from siqa.data.records import StereoPair

    root = require_dir(root, "toy")
    pairs = []
    for line in (root / "scores.txt").read_text().splitlines():
        left, right, score, scene = line.split()
        pairs.append(StereoPair(name=left, left=root / left, right=root / right, score=float(score),
                                higher_is_better=False, content=scene, distortion="unknown"))
    return pairs


def test_a_new_layout_is_its_file_and_one_line_in_the_dict(tmp_path, monkeypatch, process_numerics):
    """Train the tiny network for an epoch on a toy layout that only DATABASES knows: the
    settings take its name, use dataset.root for it and refuse dataset.manifest (its loader
    takes no manifest), and the run reads its pairs."""
    import json

    from conftest import make_tiny_database, tiny_overrides
    from siqa import config
    from siqa.data.databases import DATABASES as REGISTRY
    from siqa.settings import config_yaml
    from siqa.training import run as runner

    folder = make_tiny_database(tmp_path / "toy").parent
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    (folder / "scores.txt").write_text("".join(f"{r['left']} {r['right']} {r['score']} {r['ref']}\n"
                                               for r in rows))
    (folder / "manifest.csv").unlink()
    monkeypatch.setitem(REGISTRY, "toy", load_toy)
    assert "| csv | toy" in config_yaml()  # dataset.name's choices, in the comments
    overrides = [o for o in tiny_overrides(None, tmp_path, **{"train.epochs": 1})
                 if not o.startswith(("dataset.name", "dataset.manifest"))]
    overrides += ["dataset.name=toy", f"dataset.root={folder}"]
    cfg = config.load_config(overrides=overrides)
    with pytest.raises(UserError, match=r"dataset.manifest=m.csv has no effect in this run "
                                        r"\(dataset.name=toy\)"):
        config.check_effect(cfg, ["dataset.manifest=m.csv"])
    config.check_effect(cfg, overrides)  # dataset.root is used
    lines = []
    runner.train(cfg, progress=False, log=lines.append)
    assert lines[0].startswith("profile paper on toy, model tiny, device cpu")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["protocol"]["config"]["dataset"]["name"] == "toy"
    with open(tmp_path / "run" / "predictions.csv", newline="") as f:
        predicted = list(csv.DictReader(f))
    assert {r["split"] for r in predicted} == {"val", "test"}  # validated and tested
    assert {r["name"] for r in predicted} <= {r["left"] for r in rows}  # pairs of scores.txt
