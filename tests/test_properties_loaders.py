"""Property-based tests of the database loaders: whatever a CSV manifest or a .mat file
holds, a loader returns valid records or raises UserError, never any other exception."""
import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from PIL import Image

from siqa.data.databases import live3d, load_database
from siqa.data.databases.csv_manifest import load_csv
from siqa.data.records import StereoPair
from siqa.errors import UserError

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
W, H = 40, 36  # the smallest view sizes that give a patch are 33x33


def _save(path: Path, w=W, h=H, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(path)


def _check_records(pairs, validated):
    """What every loader promises about the records it returns."""
    assert isinstance(pairs, list) and pairs
    for p in pairs:
        assert isinstance(p, StereoPair)
        assert isinstance(p.score, float) and math.isfinite(p.score)
        assert isinstance(p.left, Path) and (p.right is None or isinstance(p.right, Path))
        assert isinstance(p.name, str) and isinstance(p.content, str)
        assert isinstance(p.higher_is_better, bool) and p.symmetric in (True, False, None)
    if validated:  # load_database checked the files, the sizes and the names
        assert len({p.name for p in pairs}) == len(pairs)
        for p in pairs:
            for f in p.files:
                with Image.open(f) as im:
                    im.load()


def _load(loader, path, validated=False):
    """loader(path)'s records, checked, or None after a UserError naming the fuzzed file or
    a file of its folder (whose name every such path holds). A name read from the file may
    hold a line break; the entry points print the message on one line (siqa.errors.run_cli)."""
    try:
        pairs = loader(path)
    except UserError as err:
        message = str(err).strip()
        assert path.name in message or path.parent.name in message, (message, path)
        event(f"{'validated' if validated else 'direct'}: UserError")
        return None
    _check_records(pairs, validated)
    event(f"{'validated' if validated else 'direct'}: records")
    return pairs


# ------------------------------------------------------------------ CSV manifests
@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prop_csv")
    for i, stem in enumerate(("a", "b")):
        _save(folder / f"{stem}_l.png", seed=i)
        _save(folder / f"{stem}_r.png", seed=10 + i)
    _save(folder / "sbs.png", w=2 * W, seed=3)
    _save(folder / "small.png", w=20, h=20, seed=4)
    _save(folder / "wide.png", w=W + 8, seed=5)
    (folder / "text.png").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    png = (folder / "a_l.png").read_bytes()
    (folder / "half.png").write_bytes(png[: len(png) // 2])
    return folder


COLUMNS = ["left", "right", "sbs", "score", "ref", "distortion", "symmetric", "name",
           "higher_is_better"]
PATHS = ["a_l.png", "a_r.png", "b_l.png", "b_r.png", "sbs.png", "small.png", "wide.png",
         "text.png", "empty.png", "half.png", "gone.png", "sub/gone.png", "", " a_l.png ",
         "a" * 300 + ".png", "/nonexistent/x.png", "..", "bad\x00name.png"]
SCORES = ["", "1", "2.5", " 3 ", "-4e2", "nan", "NaN", "inf", "-inf", "1e999", "abc", "1,5",
          "1_000", "0x10", "٣", "9" * 400]
BOOLS = ["", "true", "false", "1", "0", "yes", "no", "maybe", "TRUE"]

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


def header_cell():
    return st.one_of(
        st.sampled_from(COLUMNS),
        st.sampled_from(COLUMNS).map(lambda c: f" {c.upper()} "),
        text,
    )


def body_cell(column):
    pick = {"left": PATHS, "right": PATHS, "sbs": PATHS, "score": SCORES,
            "symmetric": BOOLS, "higher_is_better": BOOLS}.get(column.strip().lower())
    choices = [text, st.floats(allow_nan=True, allow_infinity=True).map(repr),
               st.integers().map(str)]
    if pick is not None:
        choices.insert(0, st.sampled_from(pick))
    return st.one_of(*choices)


GOOD_ROWS = [{"left": "a_l.png", "right": "a_r.png", "sbs": "", "score": "1.5", "ref": "a"},
             {"left": "b_l.png", "right": "b_r.png", "sbs": "", "score": "-2", "ref": "b"},
             {"left": "", "right": "", "sbs": "sbs.png", "score": "30", "ref": "c"}]


@st.composite
def plausible_manifests(draw):
    """A valid manifest (good files, good scores, any header case and column order, extra
    columns), with a few cells replaced by random ones."""
    header = draw(st.permutations(["left", "right", "sbs", "score", "ref", "extra"]))
    header = [draw(st.sampled_from([c, c.upper(), f" {c}"])) for c in header]
    rows = [list(header)]
    for good in draw(st.lists(st.sampled_from(GOOD_ROWS), min_size=1, max_size=4)):
        row = [good.get(c.strip().lower(), "") for c in header]
        for i, c in enumerate(header):
            if draw(st.integers(0, 7)) == 0:
                row[i] = draw(body_cell(c))
        rows.append(row)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n", escapechar="\\").writerows(rows)
    return buf.getvalue().encode(draw(st.sampled_from(["utf-8", "utf-8-sig"])))


@st.composite
def random_manifests(draw):
    """(bytes of a CSV file): random header, rows of random length, duplicates, BOM,
    no header at all, odd encodings."""
    header = draw(st.lists(header_cell(), min_size=0, max_size=7))
    if draw(st.booleans()):  # most of the time, a header that could work
        header = draw(st.sampled_from([["left", "right", "score"], ["sbs", "score"],
                                       ["left", "right", "score", "ref", "symmetric"],
                                       ["name", "sbs", "score", "higher_is_better", "extra"]])) + header
    n_rows = draw(st.integers(0, 5))
    rows = []
    for _ in range(n_rows):
        width = len(header) + draw(st.integers(-2, 2))
        cols = header + ["?"] * max(0, width - len(header))
        rows.append([draw(body_cell(c)) for c in cols[: max(0, width)]])
    if rows and draw(st.booleans()):
        rows.append(list(draw(st.sampled_from(rows))))  # a duplicated row
    if draw(st.booleans()):
        rows = [header] + rows
    # else: no header row (the first data row is read as the header)
    buf = io.StringIO()
    if draw(st.booleans()):
        csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])), escapechar="\\").writerows(rows)
    else:  # naive joining: unbalanced quotes, stray commas
        buf.write("\n".join(",".join(r) for r in rows))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    data = buf.getvalue().encode(encoding, errors="replace")
    if draw(st.integers(0, 9)) == 0:
        data = draw(st.binary(max_size=64))
    return data


@settings(max_examples=500, **SETTINGS)
@given(data=st.one_of(plausible_manifests(), random_manifests()))
def test_csv_manifest_gives_records_or_user_error(csv_folder, data):
    path = csv_folder / "manifest.csv"
    path.write_bytes(data)
    direct = _load(load_csv, path)
    checked = _load(lambda p: load_database("csv", manifest=p), path, validated=True)
    if checked is not None:  # validation only removes possibilities
        assert direct is not None and len(direct) == len(checked)


def test_csv_property_sees_valid_manifests(csv_folder):
    """The strategies can produce a valid manifest (the property is not vacuous)."""
    path = csv_folder / "manifest.csv"
    path.write_bytes(b"\xef\xbb\xbfLeft, Right ,score,extra\na_l.png,a_r.png,1.5,x\nb_l.png,b_r.png,2,\n")
    pairs = load_database("csv", manifest=path)
    assert [p.score for p in pairs] == [1.5, 2.0]
    path.write_bytes(b"left,right,score\na_l.png,a_r.png,inf\n")
    with pytest.raises(UserError, match="row 2.*not a finite number"):
        load_csv(path)


# ------------------------------------------------------------------ .mat files
def _cell(strings, shape):
    out = np.empty(shape, dtype=object)
    for i, s in enumerate(strings):
        out.flat[i] = s
    return out


def string_var(names):
    """A .mat variable meant to hold names: a cell (row or column), a char matrix, numbers,
    nested cells, a struct, or an empty array."""
    n = st.integers(0, 4)
    items = st.lists(st.one_of(st.sampled_from(names), text), min_size=0, max_size=4)
    return st.one_of(
        items.flatmap(lambda xs: st.sampled_from([(1, len(xs)), (len(xs), 1)]).map(lambda s: _cell(xs, s))),
        items.filter(lambda xs: xs).map(lambda xs: np.array(xs)),  # char matrix (padded)
        items.map(lambda xs: _cell([_cell([x], (1, 1)) for x in xs], (1, len(xs)))),  # nested cells
        n.map(lambda k: np.arange(k, dtype=np.float64).reshape(1, k)),
        items.map(lambda xs: _cell([float(i) for i in range(len(xs))], (len(xs), 1))),  # cell of numbers
        st.just({"field": "jp2k\\im2_1.bmp"}),  # a struct
        st.just(np.zeros((0, 0))),
    )


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)


def number_var():
    """A .mat variable meant to hold the scores."""
    values = st.lists(st.one_of(st.floats(-10, 80), finite_or_not), min_size=0, max_size=4)
    return st.one_of(
        values.flatmap(lambda v: st.sampled_from([(len(v), 1), (1, len(v))]).map(
            lambda s: np.array(v, dtype=np.float64).reshape(s))),
        values.map(lambda v: np.array(v, dtype=np.float64).reshape(-1, 1).repeat(2, axis=1)),  # n x 2
        st.lists(st.integers(-100, 100), max_size=4).map(lambda v: np.array(v, dtype=np.int32)),
        values.map(lambda v: _cell(v, (len(v), 1))),  # cell of numbers
        values.map(lambda v: _cell([str(x) for x in v], (1, len(v)))),  # cell of strings
        st.text(max_size=6).filter(bool).map(np.array),  # char array
        values.map(lambda v: np.array([complex(0, x) for x in v], dtype=np.complex128)),  # no inf * 1j warning
        st.lists(st.booleans(), max_size=4).map(np.array),
        st.just({"dmos": 1.0}),
    )


def mat_vars(spec, good):
    """A dict of some of the variables of `spec` {name: strategy} plus maybe an extra one;
    or a valid set of variables drawn from `good` [(name, reference, score)] in which each
    variable may be replaced by a random one."""
    randoms = st.fixed_dictionaries({}, optional={**spec, "extra": st.just(np.ones((1, 1)))})

    @st.composite
    def plausible(draw):
        rows = draw(st.lists(st.sampled_from(good), min_size=1, max_size=len(good)))
        names, refs, scores = zip(*rows)
        shape = draw(st.sampled_from(["row", "column"]))
        cell = lambda xs: _cell(xs, (1, len(xs)) if shape == "row" else (len(xs), 1))
        out = dict(zip(spec, (cell(names), cell(refs), np.array(scores, dtype=np.float64).reshape(-1, 1))))
        for key in spec:
            if draw(st.integers(0, 3)) == 0:
                out[key] = draw(spec[key])
        return out

    return st.one_of(plausible(), randoms)


def _write_mat(path, variables):
    try:
        scipy.io.savemat(path, variables)
    except Exception:  # what savemat itself refuses is not an input a loader can get
        reject()


LIVE1_NAMES = ["jp2k\\im2_1.bmp", "jp2k\\im3_2.bmp", "blur\\im2_1.bmp", "gblur\\im2_1.bmp",
               "ff\\im7_4.bmp", "jpeg\\im9_9.bmp", "refimgs\\im2.bmp", "refimgs\\im3.bmp",
               "refimgs\\im7.bmp", "wn/im7_1", "im2_1.bmp", "other\\im2_1.bmp", "", "\\", "jp2k\\"]


LIVE1_GOOD = [("jp2k\\im2_1.bmp", "refimgs\\im2.bmp", 12.5), ("jp2k\\im3_2.bmp", "refimgs\\im3.bmp", 30.0),
              ("blur\\im2_1.bmp", "refimgs\\im2.bmp", -3.0), ("ff\\im7_4.bmp", "refimgs\\im7.bmp", 55.0)]


@pytest.fixture(scope="module")
def live1_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop_live1")
    for i, name in enumerate(["jp2k/im2_1", "jp2k/im3_2", "blur/im2_1", "ff/im7_4"]):
        _save(root / f"{name}_l.bmp", seed=i)
        _save(root / f"{name}_r.bmp", seed=20 + i)
    return root


@settings(max_examples=300, **SETTINGS)
@given(variables=mat_vars({"img_names": string_var(LIVE1_NAMES), "ref_names": string_var(LIVE1_NAMES),
                           "dmos": number_var()}, LIVE1_GOOD))
def test_live1_mat_gives_records_or_user_error(live1_root, variables):
    _write_mat(live1_root / "data.mat", variables)
    _load(lambda m: live3d.load_phase1(m.parent), live1_root / "data.mat")
    _load(lambda m: load_database("live3d_phase1", root=m.parent), live1_root / "data.mat", validated=True)


LIVE2_NAMES = ["003image_1_4.bmp", "003image_2_1.bmp", "010image_3_9.bmp", "003image_0_0.bmp",
               "010image_0_0.bmp", "Stimuli\\003image_1_4.bmp", "x_9_4.bmp", "x_1_10.bmp",
               "weird.bmp", "a_" + "1" * 5000 + "_4.bmp", "", "_٣_٤.bmp"]


LIVE2_GOOD = [("003image_1_4.bmp", "003image_0_0.bmp", 40.0), ("003image_2_1.bmp", "003image_0_0.bmp", 35.5),
              ("010image_3_9.bmp", "010image_0_0.bmp", 70.0), ("003image_0_0.bmp", "003image_0_0.bmp", 29.0)]


@pytest.fixture(scope="module")
def live2_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop_live2")
    for i, name in enumerate(["003image_1_4", "003image_2_1", "010image_3_9", "003image_0_0"]):
        _save(root / "Stimuli" / f"{name}.bmp", w=2 * W, seed=i)
    return root


@settings(max_examples=300, **SETTINGS)
@given(variables=mat_vars({"StiFilename": string_var(LIVE2_NAMES), "RefFilename": string_var(LIVE2_NAMES),
                           "Dmos": number_var()}, LIVE2_GOOD))
def test_live2_mat_gives_records_or_user_error(live2_root, variables):
    _write_mat(live2_root / "3DDmosRelease.mat", variables)
    _load(lambda m: live3d.load_phase2(m.parent), live2_root / "3DDmosRelease.mat")
    _load(lambda m: load_database("live3d_phase2", root=m.parent), live2_root / "3DDmosRelease.mat",
          validated=True)


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file" + b"\0" * 200, b"\x89HDF\r\n\x1a\n" * 8,
                                     b"not a mat file at all"])
def test_damaged_mat_file_is_a_user_error(live1_root, tmp_path, content):
    (tmp_path / "data.mat").write_bytes(content)
    with pytest.raises(UserError, match=r"data\.mat"):
        live3d.load_phase1(tmp_path)


def test_mat_properties_see_valid_files(live1_root, live2_root):
    """A well-formed file loads (so the properties above are not vacuous), and a non-finite
    score names its variable and entry."""
    names = ["jp2k\\im2_1.bmp", "ff\\im7_4.bmp"]
    scipy.io.savemat(live1_root / "data.mat", {"img_names": _cell(names, (1, 2)),
                                               "ref_names": _cell(["refimgs\\im2.bmp", "refimgs\\im7.bmp"], (1, 2)),
                                               "dmos": np.array([[1.0], [2.0]])})
    assert [p.score for p in load_database("live3d_phase1", root=live1_root)] == [1.0, 2.0]
    scipy.io.savemat(live2_root / "3DDmosRelease.mat", {
        "Dmos": np.array([[30.0], [np.nan]]), "RefFilename": _cell(["003image_0_0.bmp"] * 2, (2, 1)),
        "StiFilename": _cell(["003image_1_4.bmp", "003image_2_1.bmp"], (2, 1))})
    with pytest.raises(UserError, match=r"'Dmos'.*entry 2 = nan"):
        live3d.load_phase2(live2_root)
