"""Each problem with a database gives one UserError naming the file or value."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siqa.data.records import StereoPair
from siqa.data.validate import validate_pairs
from siqa.errors import UserError


def img(path, w=40, h=36, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(path)
    return path


def pair(name, left, right=None, score=1.0, content="s1"):
    return StereoPair(name, Path(left), None if right is None else Path(right), score, False, content, "wn", True)


def test_valid_returns_view_sizes(tmp_path):
    a, b = img(tmp_path / "a.png"), img(tmp_path / "b.png")
    s = img(tmp_path / "s.png", w=90)
    assert validate_pairs([pair("x", a, b), pair("y", s)]) == [(40, 36), (45, 36)]


def test_missing_files_counted_and_named(tmp_path):
    a = img(tmp_path / "a.png")
    pairs = [pair(f"p{i}", tmp_path / f"gone{i}.png", a) for i in range(5)]
    with pytest.raises(UserError) as err:
        validate_pairs(pairs)
    msg = str(err.value)
    assert "5 missing file(s)" in msg and "gone0.png" in msg and "gone2.png" in msg and "..." in msg
    assert "\n" not in msg


def test_unreadable_and_empty(tmp_path):
    a = img(tmp_path / "a.png")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    either_order = (r"2 unreadable.*text\.png \(not an image\).*empty\.png \(empty\)"
                    r"|2 unreadable.*empty\.png.*text\.png")
    with pytest.raises(UserError, match=either_order):
        validate_pairs([pair("x", tmp_path / "text.png", a), pair("y", tmp_path / "empty.png", a)])


def test_size_mismatch(tmp_path):
    a, b = img(tmp_path / "a.png"), img(tmp_path / "b.png", w=48)
    with pytest.raises(UserError, match=r"different sizes.*a\.png is 40x36 but .*b\.png is 48x36"):
        validate_pairs([pair("x", a, b)])


def test_too_small_view(tmp_path):
    s = img(tmp_path / "small.png", w=60, h=36)  # side-by-side: 30x36 views
    with pytest.raises(UserError, match=r"smaller than 33x33.*small\.png \(view 30x36\)"):
        validate_pairs([pair("x", s)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_score_not_finite(tmp_path, bad):
    a, b = img(tmp_path / "a.png"), img(tmp_path / "b.png")
    with pytest.raises(UserError, match=rf"1 score\(s\) not finite: bad={bad!r}"):
        validate_pairs([pair("ok", a, b), pair("bad", a, b, score=bad)])


def test_duplicates(tmp_path):
    a, b, c = img(tmp_path / "a.png"), img(tmp_path / "b.png"), img(tmp_path / "c.png")
    with pytest.raises(UserError, match=r"duplicate name.*: same"):
        validate_pairs([pair("same", a, b), pair("same", a, c)])
    with pytest.raises(UserError, match=r"duplicate entr.*a\.png\+.*b\.png"):
        validate_pairs([pair("one", a, b), pair("two", a, b)])


def test_split_ratio_leaving_a_split_empty(tmp_path):
    a, b = img(tmp_path / "a.png"), img(tmp_path / "b.png")
    pairs = [pair("x", a, b, content="s1"), pair("y", b, a, content="s2")]
    with pytest.raises(UserError, match=r"leave a split with no scene.*2 scene"):
        validate_pairs(pairs, ratios=(0.6, 0.2, 0.2))
    validate_pairs(pairs, ratios=(0.5, 0.5, 0.0))


def test_all_problems_in_one_message(tmp_path):
    a = img(tmp_path / "a.png")
    with pytest.raises(UserError) as err:
        validate_pairs([pair("x", tmp_path / "nope.png", a, score=float("nan"))])
    assert "missing" in str(err.value) and "not finite" in str(err.value)


def test_empty_database():
    with pytest.raises(UserError, match="no pairs"):
        validate_pairs([])
