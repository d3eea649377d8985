"""The embedded demo database: real stereo pairs, LIVE-style distortions, model labels.

Source: the 12 rectified stereo pairs (640x480 grey PNGs, OAK-D camera) shipped in the
`stereodemo` 0.7 package (``datasets/oak-d/*_left.png`` / ``*_right.png``). The package is
only used as a file source (it cannot be imported without open3d); install it with
``pip install --no-deps stereodemo==0.7``.

Build (deterministic, seeded by `SEED`; about 10 s on 2 cores):
1. Both views are cropped to the valid rectified area given by the package's
   `stereodemo_calibration.json` (`left_image_rect_normalized` = x0, y0, x1, y1; outside it
   the rectification left smeared border pixels), then centre-cropped to the aspect ratio of
   the view size and, for `size="small"` (the default, `dataset.demo_size`), downscaled
   (Lanczos) to `VIEW_SIZE` (width, height). `size="full"` keeps the native resolution: the
   valid area (611 pixels wide) centre-cropped to LIVE 3D Phase I's 16:9 aspect, 611x344,
   no resampling: 325 patches a view, 372 x 325 = 120,900 patch pairs (LIVE 3D Phase I:
   132,860), so that the paper's protocol can be timed and its learning curve seen without
   the licensed databases. The full size codes JPEG2000 at the higher compression ratios of
   `FULL["jp2k"]` and fast fading in `FULL["ff_tile"]` tiles (15 a view, as 12 at the small
   size); the other strengths are those of `LEVELS`.
2. Five distortion types as in LIVE 3D, each at the three strengths of `LEVELS`:
   `jp2k` (Pillow/OpenJPEG JPEG2000, irreversible, compression ratios), `jpeg` (Pillow
   JPEG qualities), `wn` (additive white Gaussian noise, std in grey levels, one noise field
   per scene and view scaled by the level), `blur` (Gaussian blur, std in pixels), `ff`
   ("fast fading", transmission errors): the view is coded as a tiled JPEG2000 codestream
   (compression ratio `FF_RATE`, tiles of `FF_TILE`) and the packet data of the first k
   tiles of a seeded tile order is hit by `FF_BYTES_PER_TILE` corrupted bytes each (k from
   `LEVELS`, so the tiles hit at a level include those of the weaker levels). A byte 0xFF,
   the byte after one and the tile headers are never touched and 0xFF is never written, so
   the decoder keeps its sync. JPEG2000 tiles are coded independently, so each tile's
   error pattern is decoded on its own (an error pattern the decoder rejects, or one that
   leaves the tile unchanged, is replaced by the next seeded one, at most `FF_ATTEMPTS`)
   and its damaged tile is pasted into the clean decode: deterministic, never a decoder
   failure, and a stronger level is never less damaged.
3. Pairs per scene: the pristine pair (score 0), and per type `SYMMETRIC_LEVELS` (both views
   at the same level) and `ASYMMETRIC_LEVELS` ((weaker, stronger) levels, 0 = pristine,
   as in LIVE Phase II: one view pristine or one view more distorted than the other; which
   eye gets the stronger level is drawn once per scene and type, so the profiles of a type
   are comparable). With the defaults:
   12 captures x (1 + 5 x (3 + 3)) = 372 pairs.

Label (a DMOS-like score, 0 = pristine, higher = worse, about 0..60 with the defaults),
a full-reference stereo model computed against the pristine pair:
- per view, the mean SSIM against the same pristine view (skimage, Gaussian window
  sigma 1.5, data range 255, the constants of Wang et al. 2004): Q_l, Q_r;
- binocular pooling by local energy, after Wang, Rehman, Zeng, Wang & Wang, "Quality
  prediction of asymmetrically distorted stereoscopic 3D images", IEEE TIP 2015: the local
  energy E of an image is its local variance in the same Gaussian window; per view the
  energy ratio map R = (E_dist + c) / (E_ref + c) (c = (0.03 * 255)^2, the SSIM C2) and the
  weight g = sum(E_dist * R) / sum(E_dist); Q = (g_l Q_l + g_r Q_r) / (g_l + g_r);
- score = 100 * (1 - Q), rounded to 4 decimals.
A blurred view loses energy (R < 1), so it weighs less than the sharper view and an
asymmetrically blurred pair scores better than the mean of its two views; a noisy view
gains energy (R > 1) and dominates, so an asymmetrically noisy pair scores worse than the
mean: the two behaviours reported for asymmetric distortion in the binocular literature.
A property of this pooling to know about: a distortion that adds energy (noise, the
blocks of fast fading) to the *better* view of an asymmetric pair raises that view's weight,
so a pair (level 1, level 3) can score slightly better than (pristine, level 3). Symmetric
levels are ordered (both views get the same weight), a stronger level on one view with the
other pristine is always worse, and a pooled label always lies between its two views' own
labels 100 * (1 - Q_view).
Per-pair details (Q_l, Q_r, g_l, g_r) are written to `labels.csv`.

Output (`data/demo` by default): `refimgs/{scene}_{l,r}.png`,
`{type}/{scene}_{level}_{l,r}.png`, `manifest.csv` (name,left,right,score,ref,distortion,
symmetric), `labels.csv`, `demo_info.json` (the build settings; a folder built with other
settings is rebuilt). The build goes to a temporary folder next to the target that is
renamed into place at the end, so an interrupted build is never used.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from siqa.errors import UserError
from siqa.files import DIR_MODE, remove_dead_temporaries, writer_tag
from siqa.progress import bar as progress_bar

DEFAULT_ROOT = Path("data/demo")
FULL_ROOT = Path("data/demo_full")
VIEW_SIZE = (128, 96)  # (width, height) of each view: 12 patches a view keep the demo run short
SEED = 2021
TYPES = ("jp2k", "jpeg", "wn", "blur", "ff")
LEVELS = {  # strength of levels 1, 2, 3 (0 = pristine)
    "jp2k": (12, 30, 70),  # compression ratio
    "jpeg": (35, 14, 6),  # JPEG quality
    "wn": (6.0, 14.0, 30.0),  # noise std, grey levels
    "blur": (0.8, 1.6, 3.2),  # Gaussian std, pixels
    "ff": (1, 3, 6),  # JPEG2000 tiles hit by transmission errors
}
FF_RATE = 10  # compression ratio of the fast-fading codestream
FF_TILE = (32, 32)  # JPEG2000 tile size (width, height) of the fast-fading codestream (12 tiles a view)
FF_BYTES_PER_TILE = 3  # corrupted bytes in the packet data of each hit tile
FF_ATTEMPTS = 20
FULL = {  # demo_size=full: native views; JPEG2000 ratios and fast-fading tiles for that size
    "aspect": (16, 9),  # LIVE 3D Phase I's 640x360
    "jp2k": (20, 60, 160),  # compression ratio
    "ff_tile": (128, 128),
}
SIZES = ("small", "full")
SYMMETRIC_LEVELS = (1, 2, 3)
ASYMMETRIC_LEVELS = ((0, 2), (0, 3), (1, 3))  # (weaker view level, stronger view level)
SSIM_SIGMA = 1.5
BUILD_VERSION = 1
INSTALL_HINT = "pip install --no-deps stereodemo==0.7"


# --------------------------------------------------------------------------- sources
# Near-duplicate scenes of the source share one content id, so that splits never separate
# them: `desk`, `pov_hands` and `pov_controllers` show the same desk from nearly the same
# viewpoint; `kid_bedroom` and `donkey_toy` share a crib. 12 captures, 9 scenes. The
# manifest keeps each capture's own `ref`; the loader (load_database) maps it to its scene.
CONTENT_GROUPS = {"pov_hands": "desk", "pov_controllers": "desk", "donkey_toy": "kid_bedroom"}


def content_group(scene: str) -> str:
    return CONTENT_GROUPS.get(scene, scene)


def source_dir() -> Path:
    spec = importlib.util.find_spec("stereodemo")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the demo database needs the stereodemo package: run `{INSTALL_HINT}`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "oak-d"
    if not folder.is_dir() or not sorted(folder.glob("*_left.png")):
        raise UserError(f"stereodemo is installed but {folder} has no *_left.png: run `{INSTALL_HINT}`")
    return folder


def source_scenes(folder: Path):
    """[(scene, left_path, right_path)] sorted by scene name."""
    out = []
    for left in sorted(folder.glob("*_left.png")):
        scene = left.name[: -len("_left.png")]
        right = folder / f"{scene}_right.png"
        if right.is_file():
            out.append((scene, left, right))
    return out


def _valid_rect(folder: Path, width: int, height: int):
    calib = folder / "stereodemo_calibration.json"
    rect = (0.0, 0.0, 1.0, 1.0)
    if calib.is_file():
        rect = tuple(json.loads(calib.read_text()).get("left_image_rect_normalized", rect))
    x0, y0, x1, y1 = rect
    return (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))


def default_root(size="small") -> Path:
    _check_size(size)
    return FULL_ROOT if size == "full" else DEFAULT_ROOT


def _check_size(size):
    if size not in SIZES:
        raise UserError(f"dataset.demo_size: expected one of {', '.join(SIZES)}, got {size!r}")


def native_size(rect):
    """(width, height) of a full-size view: the valid area's width at FULL's aspect."""
    w, h = rect[2] - rect[0], rect[3] - rect[1]
    aw, ah = FULL["aspect"]
    return (w, round(w * ah / aw)) if w * ah <= h * aw else (round(h * aw / ah), h)


def prepare_view(path: Path, rect, size=VIEW_SIZE) -> np.ndarray:
    """Grey uint8 view: valid area, centre crop to the aspect of `size`, Lanczos resize
    (none when the crop already has that size: the full-size demo's native views)."""
    im = Image.open(path).convert("L").crop(rect)
    w, h = im.size
    target = size[0] / size[1]
    if w / h > target:
        cw, ch = round(h * target), h
    else:
        cw, ch = w, round(w / target)
    left, top = (w - cw) // 2, (h - ch) // 2
    im = im.crop((left, top, left + cw, top + ch))
    if im.size != tuple(size):
        im = im.resize(size, Image.LANCZOS)
    return np.asarray(im)


# --------------------------------------------------------------------------- distortions
def _jp2k_codestream(image: np.ndarray, rate, tile=None) -> bytes:
    buf = io.BytesIO()
    extra = {"tile_size": tuple(tile)} if tile else {}
    Image.fromarray(image).save(
        buf, "JPEG2000", quality_mode="rates", quality_layers=[float(rate)], irreversible=True,
        no_jp2=True, **extra
    )
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.load()
    return np.asarray(im.convert("L"))


def jp2k(image, rate):
    return _decode(_jp2k_codestream(image, rate))


def jpeg(image, quality):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=int(quality))
    return _decode(buf.getvalue())


def white_noise(image, sigma, field):
    return np.clip(np.rint(image.astype(np.float64) + sigma * field), 0, 255).astype(np.uint8)


def gaussian_blur(image, sigma):
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(image.astype(np.float64), sigma, mode="reflect", truncate=4.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _tile_segments(stream: bytes):
    """{tile index: (first, end) byte range of its packet data} of a JPEG2000 codestream."""
    sots = [m.start() for m in re.finditer(b"\xff\x90", stream)]
    segments = {}
    for k, sot in enumerate(sots):
        tile = int.from_bytes(stream[sot + 4 : sot + 6], "big")
        psot = int.from_bytes(stream[sot + 6 : sot + 10], "big")
        end = sot + psot if psot else (sots[k + 1] if k + 1 < len(sots) else len(stream) - 2)
        sod = stream.find(b"\xff\x93", sot, end)
        if sod >= 0:
            segments[tile] = (sod + 2, end)
    return segments


def fast_fading(image, n_tiles, seed, tile=FF_TILE):
    """Decoded JPEG2000 codestream whose packet data is hit by errors in `n_tiles` tiles."""
    stream = _jp2k_codestream(image, FF_RATE, tile)
    clean = _decode(stream)
    h, w = image.shape
    tw, th = tile
    per_row = -(-w // tw)
    segments = _tile_segments(stream)
    order = np.random.default_rng([*seed, 0]).permutation(sorted(segments))
    out = clean.copy()
    hit = 0
    for tile in order.tolist():
        if hit >= int(n_tiles):
            break
        first, end = segments[tile]
        safe = np.array([i for i in range(first, end) if stream[i] != 0xFF and stream[i - 1] != 0xFF])
        row, col = divmod(tile, per_row)
        ys, xs = slice(row * th, (row + 1) * th), slice(col * tw, (col + 1) * tw)
        for attempt in range(FF_ATTEMPTS):
            rng = np.random.default_rng([*seed, 1 + tile, attempt])
            positions = rng.permutation(safe)[:FF_BYTES_PER_TILE]
            flips = rng.integers(1, 256, size=positions.size)
            data = bytearray(stream)
            for pos, flip in zip(positions.tolist(), flips.tolist()):
                value = data[pos] ^ flip
                data[pos] = 0xFE if value == 0xFF else value
            try:
                damaged = _decode(bytes(data))
            except (OSError, ValueError, SyntaxError):
                continue  # this error pattern kills the decoder: draw the next one
            if not np.array_equal(damaged[ys, xs], clean[ys, xs]):
                out[ys, xs] = damaged[ys, xs]
                hit += 1
                break
    return out


def distort(kind, image, level, seed, noise_field=None, size="small"):
    """`image` (grey uint8) with distortion `kind` at `level` (1..3); level 0 = unchanged.
    `size`: the demo size, whose JPEG2000 ratios and fast-fading tiles are used."""
    if level == 0:
        return image
    strength = (FULL["jp2k"] if size == "full" and kind == "jp2k" else LEVELS[kind])[level - 1]
    if kind == "jp2k":
        return jp2k(image, strength)
    if kind == "jpeg":
        return jpeg(image, strength)
    if kind == "wn":
        return white_noise(image, strength, noise_field)
    if kind == "blur":
        return gaussian_blur(image, strength)
    if kind == "ff":
        # the same seed at every level: stronger levels corrupt a superset of the positions
        return fast_fading(image, strength, seed, FULL["ff_tile"] if size == "full" else FF_TILE)
    raise ValueError(kind)


# --------------------------------------------------------------------------- label model
def _local_moments(x):
    from scipy.ndimage import gaussian_filter

    mean = gaussian_filter(x, SSIM_SIGMA, truncate=3.5)
    var = gaussian_filter(x * x, SSIM_SIGMA, truncate=3.5) - mean * mean
    return np.maximum(var, 0.0)


def view_quality(ref: np.ndarray, dist: np.ndarray):
    """(mean SSIM, energy weight g) of one distorted view against its pristine view."""
    from skimage.metrics import structural_similarity

    ref64, dist64 = ref.astype(np.float64), dist.astype(np.float64)
    q = float(
        structural_similarity(
            ref64, dist64, data_range=255, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False
        )
    )
    c = (0.03 * 255) ** 2
    e_ref, e_dist = _local_moments(ref64), _local_moments(dist64)
    ratio = (e_dist + c) / (e_ref + c)
    g = float((e_dist * ratio).sum() / max(e_dist.sum(), 1e-12))
    return q, g


def pooled_label(q_l, g_l, q_r, g_r) -> float:
    """Energy-weighted binocular pooling of the two views' SSIM, as a 0..100 DMOS-like score."""
    q = (g_l * q_l + g_r * q_r) / (g_l + g_r)
    return round(max(0.0, 100.0 * (1.0 - q)), 4)


# --------------------------------------------------------------------------- build
def settings(size="small") -> dict:
    _check_size(size)
    full = size == "full"
    levels = {k: list(v) for k, v in LEVELS.items()}
    if full:
        levels["jp2k"] = list(FULL["jp2k"])
    return dict(
        version=BUILD_VERSION,
        **({"size": "full", "aspect": list(FULL["aspect"])} if full else {}),
        view_size="native" if full else list(VIEW_SIZE),
        seed=SEED,
        types=list(TYPES),
        levels=levels,
        ff_rate=FF_RATE,
        ff_tile=list(FULL["ff_tile"] if full else FF_TILE),
        ff_bytes_per_tile=FF_BYTES_PER_TILE,
        symmetric_levels=list(SYMMETRIC_LEVELS),
        asymmetric_levels=[list(a) for a in ASYMMETRIC_LEVELS],
    )


def _save_png(path: Path, image: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, "PNG", optimize=False, compress_level=6)


def build_scene(out: Path, s_idx: int, scene: str, lpath: Path, rpath: Path, size="small"):
    """Write one scene's pristine and distorted views into `out`; returns its (manifest
    rows, label details). Each scene is seeded by its index: scenes can be built apart."""
    out = Path(out)
    with Image.open(lpath) as im:
        rect = _valid_rect(Path(lpath).parent, *im.size)
    view_size = native_size(rect) if size == "full" else VIEW_SIZE
    ref = {"l": prepare_view(lpath, rect, view_size), "r": prepare_view(rpath, rect, view_size)}
    rows, details = [], []
    files = {(0, e): f"refimgs/{scene}_{e}.png" for e in "lr"}
    for e in "lr":
        _save_png(out / files[(0, e)], ref[e])
    rows.append(dict(name=f"pristine/{scene}", left=files[(0, "l")], right=files[(0, "r")],
                     score=0.0, ref=scene, distortion="pristine", symmetric="true"))
    details.append(dict(name=f"pristine/{scene}", q_l=1.0, q_r=1.0, g_l=1.0, g_r=1.0))
    for t_idx, kind in enumerate(TYPES):
        views = {(0, e): ref[e] for e in "lr"}
        quality = {(0, e): (1.0, 1.0) for e in "lr"}  # (SSIM, energy weight) per view
        levels = sorted({lv for lv in SYMMETRIC_LEVELS} | {lv for pr in ASYMMETRIC_LEVELS for lv in pr} - {0})
        for e_idx, e in enumerate("lr"):
            seed = [SEED, s_idx, t_idx, e_idx]
            field = np.random.default_rng(seed).standard_normal(ref[e].shape) if kind == "wn" else None
            for lv in levels:
                views[(lv, e)] = distort(kind, ref[e], lv, seed, field, size)
                files[(lv, e)] = f"{kind}/{scene}_{lv}_{e}.png"
                _save_png(out / files[(lv, e)], views[(lv, e)])
                quality[(lv, e)] = view_quality(ref[e], views[(lv, e)])
        profiles = [(f"s{lv}", lv, lv, True) for lv in SYMMETRIC_LEVELS]
        stronger_left = bool(np.random.default_rng([SEED, s_idx, t_idx, 99]).integers(2))
        for weak, strong in ASYMMETRIC_LEVELS:
            ll, rl = (strong, weak) if stronger_left else (weak, strong)
            profiles.append((f"a{weak}{strong}", ll, rl, False))
        for tag, ll, rl, sym in profiles:
            name = f"{kind}/{scene}_{tag}"
            (q_l, g_l), (q_r, g_r) = quality[(ll, "l")], quality[(rl, "r")]
            score = pooled_label(q_l, g_l, q_r, g_r)
            parts = dict(q_l=q_l, q_r=q_r, g_l=g_l, g_r=g_r)
            rows.append(dict(name=name, left=files[(ll, "l")], right=files[(rl, "r")], score=score,
                             ref=scene, distortion=kind, symmetric="true" if sym else "false"))
            details.append(dict(name=name, **{k: round(v, 6) for k, v in parts.items()}))
    return rows, details


def _build_scene_job(job):
    return build_scene(*job)


def build_demo(out_dir, progress=False, size="small", workers=1) -> Path:
    """Write the demo database into `out_dir` (created; should be empty). Returns it.
    `workers` > 1 builds the scenes in that many processes (the same files)."""
    _check_size(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folder = source_dir()
    scenes = source_scenes(folder)
    if not scenes:
        raise UserError(f"no stereo pairs found in {folder}: run `{INSTALL_HINT}`")
    jobs = [(out, s_idx, scene, lpath, rpath, size) for s_idx, (scene, lpath, rpath) in enumerate(scenes)]
    bar = progress_bar(total=len(jobs), desc="demo", unit="scene", progress=progress)
    if workers > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = []
            for result in pool.map(_build_scene_job, jobs):
                results.append(result)
                bar.update(1)
    else:
        results = []
        for job in jobs:
            results.append(build_scene(*job))
            bar.update(1)
    bar.close()
    rows = [row for scene_rows, _ in results for row in scene_rows]
    details = [d for _, scene_details in results for d in scene_details]
    _write_csv(out / "manifest.csv", rows, ["name", "left", "right", "score", "ref", "distortion", "symmetric"])
    _write_csv(out / "labels.csv", details, ["name", "q_l", "q_r", "g_l", "g_r"])
    (out / "demo_info.json").write_text(json.dumps(dict(settings=settings(size), pairs=len(rows)), indent=1) + "\n")
    return out


def _write_csv(path, rows, fields):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if k == "score" else r[k]) for k in fields})


def _is_current(root: Path, size="small") -> bool:
    info = root / "demo_info.json"
    if not (info.is_file() and (root / "manifest.csv").is_file()):
        return False
    try:
        return json.loads(info.read_text()).get("settings") == settings(size)
    except (ValueError, OSError):
        return False


def ensure_demo(root=DEFAULT_ROOT, progress=True, size="small") -> Path:
    """The demo database folder, built first if it is missing or built with other settings
    (another `size` included). The full size is built by one process per core."""
    _check_size(size)
    root = Path(root)
    for kind in ("build", "old"):  # folders of builds that were killed (not of live ones)
        remove_dead_temporaries(root.parent, f".{root.name}-{kind}-*")
    if _is_current(root, size):
        return root
    if root.exists() and any(root.iterdir()) and not (root / "demo_info.json").exists():
        raise UserError(f"{root} exists and is not a demo database: remove it or choose another dataset.root")
    source_dir()  # a clear error before anything is written
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-build-{writer_tag()}."))
    try:
        os.chmod(tmp, DIR_MODE)  # renamed into place: mkdtemp's 0700 would hide it from others
        build_demo(tmp, progress=progress, size=size,
                   workers=(os.cpu_count() or 1) if size == "full" else 1)
        if root.exists():  # empty, or an older build: move it aside, then swap
            old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-old-{writer_tag()}."))
            os.replace(root, old / root.name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _is_current(root, size):  # not a concurrent build that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root

