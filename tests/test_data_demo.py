"""The embedded demo database: reproducible, labels ordered, binocular pooling; the
full-size variant at native resolution."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from siqa.data import demo, load_database
from siqa.errors import UserError
from siqa.imageio import grey_pil


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    a = demo.ensure_demo(base / "a" / "demo", progress=False)
    b = demo.ensure_demo(base / "b" / "demo", progress=False)
    return a, b


def rows(root):
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def files(root):
    """Every file under `root`: its relative path -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_two_builds_identical(built):
    a, b = built
    assert files(a) == files(b)
    assert rows(a) == rows(b)
    assert not [p for p in a.parent.iterdir() if p.name != "demo"]  # no temp folders left


def test_loads_through_csv_loader(built):
    a, _ = built
    pairs = load_database("demo", root=a)
    n_scenes = len(demo.source_scenes(demo.source_dir()))
    per_scene = 1 + len(demo.TYPES) * (len(demo.SYMMETRIC_LEVELS) + len(demo.ASYMMETRIC_LEVELS))
    assert len(pairs) == n_scenes * per_scene == 372
    assert n_scenes == 12 and len({p.content for p in pairs}) == 9  # 12 scenes, 9 content groups
    # near-duplicates share a content id: the desk seen three times, the crib twice
    scene_of = {p.name: p.name.split("/")[1].rsplit("_", 1)[0] if p.distortion != "pristine"
                else p.name.split("/")[1] for p in pairs}
    groups = {}
    for p in pairs:
        groups.setdefault(p.content, set()).add(scene_of[p.name])
    assert groups["desk"] == {"desk", "pov_hands", "pov_controllers"}
    assert groups["kid_bedroom"] == {"kid_bedroom", "donkey_toy"}
    assert all(len(v) == 1 for k, v in groups.items() if k not in ("desk", "kid_bedroom"))
    assert {p.distortion for p in pairs} == {"pristine", "jp2k", "jpeg", "wn", "blur", "ff"}
    assert all(p.score == 0 for p in pairs if p.distortion == "pristine")
    assert all(p.score > 0 for p in pairs if p.distortion != "pristine")
    assert all(not p.higher_is_better for p in pairs)
    lv, rv = grey_pil(pairs[0].left), grey_pil(pairs[0].right)
    assert lv.shape == rv.shape == (demo.VIEW_SIZE[1], demo.VIEW_SIZE[0])
    sym = [p.symmetric for p in pairs if p.distortion != "pristine"]
    assert sym.count(True) == sym.count(False) == 12 * 5 * 3


def test_labels_rank_levels(built):
    a, _ = built
    score = {r["name"]: float(r["score"]) for r in rows(a)}
    scenes = {r["ref"] for r in rows(a)}
    for scene in scenes:
        for kind in demo.TYPES:
            sym = [score[f"{kind}/{scene}_s{lv}"] for lv in demo.SYMMETRIC_LEVELS]
            assert sym == sorted(sym) and len(set(sym)) == 3, (kind, scene, sym)
            # one pristine view: the stronger the other view, the worse
            assert score[f"{kind}/{scene}_a02"] < score[f"{kind}/{scene}_a03"], (kind, scene)
    # the pooled label is a weighted mean: it lies between the two views' own labels
    with open(a / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            d_l, d_r = 100 * (1 - float(r["q_l"])), 100 * (1 - float(r["q_r"]))
            assert min(d_l, d_r) - 1e-3 <= score[r["name"]] <= max(d_l, d_r) + 1e-3


def test_asymmetric_labels_are_not_the_mean(built):
    a, _ = built
    below, above = [], []
    for r in rows(a):
        if r["symmetric"] != "false":
            continue
        views = []  # (SSIM, energy weight) of each view as the build rates it; (1, 1) if pristine
        for eye, column in (("l", "left"), ("r", "right")):
            ref, view = grey_pil(a / f"refimgs/{r['ref']}_{eye}.png"), grey_pil(a / r[column])
            views.append((1.0, 1.0) if np.array_equal(ref, view) else demo.view_quality(ref, view))
        (q_l, g_l), (q_r, g_r) = views
        label = demo.pooled_label(q_l, g_l, q_r, g_r)
        assert label == pytest.approx(float(r["score"]), abs=1e-3)
        mean_of_views = (100 * (1 - q_l) + 100 * (1 - q_r)) / 2
        if r["distortion"] == "blur":
            below.append(label < mean_of_views - 0.5)
        if r["distortion"] == "wn":
            above.append(label > mean_of_views + 0.5)
    assert below and all(below)  # a blurred view weighs less than the sharper one
    assert above and all(above)  # a noisy view dominates


def test_missing_package_message(tmp_path, monkeypatch):
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps stereodemo==0\.7"):
        demo.ensure_demo(tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


def test_interrupted_build_is_never_used(tmp_path, monkeypatch):
    def crash(out, progress=False, **settings):
        (out / "manifest.csv").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "build_demo", crash)
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_demo(tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_other_folder(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("x")
    with pytest.raises(UserError, match="not a demo database"):
        demo.ensure_demo(tmp_path / "demo")


# ----------------------------------------------------------------- dataset.demo_size=full
def _first_scene():
    folder = demo.source_dir()
    scene, left, right = demo.source_scenes(folder)[0]
    with Image.open(left) as im:
        rect = demo._valid_rect(folder, *im.size)
    return folder, scene, left, right, rect


def test_full_size_views_are_native_crops():
    """No resampling: a full-size view is the valid area's pixels, centre-cropped to 16:9."""
    folder, _, left, _, rect = _first_scene()
    calib = json.loads((folder / "stereodemo_calibration.json").read_text())
    x0, y0, x1, y1 = calib["left_image_rect_normalized"]
    source = np.asarray(Image.open(left).convert("L"))
    h, w = source.shape
    valid = source[round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)]
    width = valid.shape[1]
    height = round(width * 9 / 16)
    top = (valid.shape[0] - height) // 2
    size = demo.native_size(rect)
    assert size == (width, height) == (611, 344)
    np.testing.assert_array_equal(demo.prepare_view(left, rect, size), valid[top:top + height])
    # about as many patch pairs as LIVE 3D Phase I (365 pairs x 364 patches of 640x360 views)
    per_view = len(range(0, height - 32, 24)) * len(range(0, width - 32, 24))
    assert per_view == 325 and 0.85 < 372 * per_view / (365 * 364) < 1.15


def test_full_size_scene_is_built_at_native_resolution(tmp_path):
    _, scene, left, right, rect = _first_scene()
    rows_, details = demo.build_scene(tmp_path, 0, scene, left, right, size="full")
    assert len(rows_) == len(details) == 1 + len(demo.TYPES) * 6
    for r in rows_:
        for view in (r["left"], r["right"]):
            assert Image.open(tmp_path / view).size == (611, 344), view
    score = {r["name"]: r["score"] for r in rows_}
    for kind in demo.TYPES:
        sym = [score[f"{kind}/{scene}_s{lv}"] for lv in demo.SYMMETRIC_LEVELS]
        assert sym == sorted(sym) and len(set(sym)) == 3, (kind, sym)
    # the full size has its own settings, root and JPEG2000 / fast-fading profile
    assert demo.settings("full") != demo.settings("small")
    assert demo.default_root("full") != demo.default_root("small")
    with pytest.raises(UserError, match="demo_size"):
        demo.settings("huge")
