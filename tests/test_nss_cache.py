"""The NSS cache recomputes exactly what changed; the CLI works on a small CSV."""
import subprocess
import sys
from pathlib import Path

import cv2
import nss_reference as ref
import numpy as np
import pytest

import siqa.nss.cache as cache
from siqa.errors import UserError
from siqa.nss import nss_features

ROOT = Path(__file__).resolve().parents[1]


def _write_pairs(folder, n=2, size=(96, 64)):
    """n stereo pairs as PNG files plus one side-by-side file; returns [(left, right)]."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, scene in enumerate(["stairs", "cycles", "toy"][:n]):
        left, right = ref.natural_pair(scene, *size)
        lp, rp = folder / f"p{i}_l.png", folder / f"p{i}_r.png"
        cv2.imwrite(str(lp), left)
        cv2.imwrite(str(rp), right)
        pairs.append((str(lp), str(rp)))
    return pairs


@pytest.fixture
def counted(monkeypatch):
    """Count the pairs actually computed (workers=0 runs them in this process)."""
    calls = []
    real = cache.compute_pair

    def spy(left, right, *args, **kwargs):
        calls.append((left, right))
        return real(left, right, *args, **kwargs)

    monkeypatch.setattr(cache, "compute_pair", spy)
    return calls


def test_targets_are_the_features_and_are_cached(tmp_path, counted):
    pairs = _write_pairs(tmp_path / "img")
    out = cache.nss_targets(pairs, cache_dir=tmp_path / "c", workers=0, progress=False)
    assert out.shape == (2, 108) and out.dtype == np.float64
    for (lp, rp), row in zip(pairs, out):
        expected = nss_features(cv2.imread(lp, 0), cv2.imread(rp, 0))
        np.testing.assert_array_equal(row, expected)
    assert len(counted) == 2
    again = cache.nss_targets(pairs, cache_dir=tmp_path / "c", workers=0, progress=False)
    np.testing.assert_array_equal(again, out)
    assert len(counted) == 2  # nothing recomputed
    assert len(list((tmp_path / "c" / "nss").rglob("*.nss"))) == 2


def test_changed_image_and_setting_recompute_only_that(tmp_path, counted):
    pairs = _write_pairs(tmp_path / "img")
    first = cache.nss_targets(pairs, cache_dir=tmp_path / "c", workers=0, progress=False)
    counted.clear()
    img = cv2.imread(pairs[1][0], 0)
    img[10:20, 10:20] = 255 - img[10:20, 10:20]
    cv2.imwrite(pairs[1][0], img)
    second = cache.nss_targets(pairs, cache_dir=tmp_path / "c", workers=0, progress=False)
    assert counted == [pairs[1]]
    np.testing.assert_array_equal(second[0], first[0])
    assert not np.array_equal(second[1], first[1])
    counted.clear()
    cache.nss_targets(pairs, preprocess="global", cache_dir=tmp_path / "c", workers=0, progress=False)
    assert len(counted) == 2
    counted.clear()
    cache.nss_targets(pairs, cache_dir=tmp_path / "c", workers=0, progress=False)
    cache.nss_targets(pairs, preprocess="global", cache_dir=tmp_path / "c", workers=0, progress=False)
    assert counted == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_corrupt_entry_is_detected_and_recomputed(tmp_path, counted, damage):
    pairs = _write_pairs(tmp_path / "img")
    first = cache.nss_targets(pairs, cache_dir=tmp_path / "c", workers=0, progress=False)
    key, _ = cache.entry_key(*pairs[0], cache._settings("mle0", "reference"))
    path = cache.entry_path(tmp_path / "c", key)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[:-5]
    elif damage == "flip":
        data = data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:]
    elif damage == "empty":
        data = b""
    else:
        data = b"\x00garbage\n{}\n" + b"1" * 864
    path.write_bytes(data)
    counted.clear()
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = cache.nss_targets(pairs, cache_dir=tmp_path / "c", workers=0, progress=False)
    assert counted == [pairs[0]]
    np.testing.assert_array_equal(again, first)
    assert cache.check_targets(pairs, cache_dir=tmp_path / "c")["valid"] == 2


def test_side_by_side_and_parallel_workers(tmp_path):
    pairs = _write_pairs(tmp_path / "img", n=3)
    left, right = cv2.imread(pairs[0][0], 0), cv2.imread(pairs[0][1], 0)
    sbs = tmp_path / "img" / "sbs.png"
    cv2.imwrite(str(sbs), np.hstack([left, right]))
    jobs = pairs + [(str(sbs), None)]
    out = cache.nss_targets(jobs, cache_dir=tmp_path / "c", workers=2, progress=False)
    np.testing.assert_array_equal(out[3], out[0])
    serial = cache.nss_targets(jobs, cache_dir=tmp_path / "c2", workers=0, progress=False)
    np.testing.assert_array_equal(out, serial)


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        cache.nss_targets([(str(tmp_path / "nope.png"), None)], cache_dir=tmp_path / "c", workers=0)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((20, 40), np.uint8))
    with pytest.raises(UserError, match="20x20"):
        cache.nss_targets([(str(small), None)], cache_dir=tmp_path / "c", workers=0, progress=False)
    with pytest.raises(UserError, match="marginal"):
        cache.nss_targets([(str(small), None)], marginal="x", cache_dir=tmp_path / "c")


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "siqa.nss", *args], cwd=cwd, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_cli_computes_and_checks(tmp_path):
    pairs = _write_pairs(tmp_path / "img")
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("left,right\n" + "".join(f"img/{Path(l).name},img/{Path(r).name}\n" for l, r in pairs))
    cache_dir = tmp_path / "cache"
    res = _cli(str(csv_path), "--check", "--cache-dir", str(cache_dir), cwd=tmp_path)
    assert res.returncode == 1 and "0 cached, 2 missing" in res.stdout
    res = _cli(str(csv_path), "--cache-dir", str(cache_dir), "--workers", "0", "--no-progress",
               "--output", str(tmp_path / "t.npy"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 pairs" in res.stdout and "Sigma_RR" in res.stdout
    targets = np.load(tmp_path / "t.npy")
    np.testing.assert_array_equal(targets, cache.nss_targets(pairs, cache_dir=cache_dir, progress=False))
    res = _cli(str(csv_path), "--check", "--cache-dir", str(cache_dir), cwd=tmp_path)
    assert res.returncode == 0 and "2 cached, 0 missing, 0 corrupt" in res.stdout
    assert _cli("--help", cwd=tmp_path).returncode == 0


def test_cli_constants_match_the_library():
    import siqa.nss.__main__ as cli
    from siqa.nss import features

    assert (cli.MARGINALS, cli.PREPROCESS, cli.PARAMETERS) == (
        features.MARGINALS, features.PREPROCESS, features.PARAMETERS)


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("a,b\nx,y\n")
    res = _cli(str(csv_path), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "left,right" in res.stderr
