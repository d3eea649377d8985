"""Bad inputs, run as a user runs them (train.py / evaluate.py / predict.py as subprocesses).

Every case must give: exit code 2; exactly one non-empty stderr line that starts with
"error:" and names the culprit (file, key or value); no traceback; no output folder with
files in it; no NSS cache entry.
"""
import csv
from dataclasses import dataclass, field
from pathlib import Path

import entry_points
import numpy as np
import pytest
import scipy.io
from PIL import Image

from conftest import make_tiny_database, run_entry, tiny_overrides

TIMEOUT = 120


@dataclass
class Case:
    script: str
    args: list
    culprits: tuple  # substrings the error line must contain
    outputs: list = field(default_factory=list)  # paths that must not hold any file afterwards


# ------------------------------------------------------------------ shared fixtures
@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One tiny database (3 scenes x 2 levels, 48x40 views) for the whole module."""
    folder = tmp_path_factory.mktemp("bad_inputs_db")
    manifest = make_tiny_database(folder, scenes=3, levels=2, size=(48, 40))
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # absolute paths: the cases write their manifests elsewhere
        row["left"], row["right"] = str(folder / row["left"]), str(folder / row["right"])
    return folder, manifest, rows


@pytest.fixture(scope="module")
def checkpoints(db, tmp_path_factory, checkpoint):
    """best.pt whose tensors have the wrong shapes for the model (but the right keys), a
    copy of it with the bytes of one tensor flipped (a plain torch.load reads it anyway),
    and the session's good best.pt (tests/conftest.py: tiny_run)."""
    import zipfile

    import torch

    from siqa import config
    from siqa.checkpoint import save_checkpoint
    from siqa.models.bourbia2021 import MultiTaskSIQA

    folder, manifest, rows = db
    work = tmp_path_factory.mktemp("bad_inputs_ckpt")
    cfg = config.load_config(overrides=tiny_overrides(manifest, work, **{"model.name": "bourbia2021"}))
    keys = list(MultiTaskSIQA().state_dict())
    names = [f"{Path(r['left']).name}|{Path(r['right']).name}" for r in rows]
    state = {
        "model": {k: torch.zeros(2) for k in keys},
        "epoch": 1, "best": None, "config": cfg,
        "split": {"train": names[:2], "val": names[2:4], "test": names[4:]},
        "database": {"name": "csv", "higher_is_better": False, "score_min": 0.0, "score_max": 12.0},
    }
    wrong = work / "other_model" / "best.pt"
    save_checkpoint(wrong, state)
    data = bytearray(wrong.read_bytes())
    with zipfile.ZipFile(wrong) as zf:  # the record of the first tensor's bytes
        record = next(i for i in zf.infolist() if "/data/" in i.filename)
    header = record.header_offset
    start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little") \
        + int.from_bytes(data[header + 28 : header + 30], "little")
    for i in range(start, start + record.file_size):
        data[i] ^= 0xFF
    corrupt = work / "flipped.pt"
    corrupt.write_bytes(bytes(data))
    return wrong, corrupt, checkpoint


# ------------------------------------------------------------------ helpers
def write_manifest(folder: Path, rows, fields=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    fields = fields or list(rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def grey(path: Path, size):
    w, h = size
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(path)
    return path


def train_case(tmp, rows, culprits, **extra):
    manifest = write_manifest(tmp / "in", rows)
    return Case("train.py", tiny_overrides(manifest, tmp / "work", **extra), culprits,
                [tmp / "work"])


def with_row(rows, index, **changes):
    rows = [dict(r) for r in rows]
    rows[index].update(changes)
    return rows


# ------------------------------------------------------------------ the cases
def missing_image(tmp, db, ckpt):
    return train_case(tmp, with_row(db[2], 0, left=str(tmp / "gone_l.png")), ("gone_l.png", "missing"))


def zero_byte_image(tmp, db, ckpt):
    (tmp / "empty_l.png").write_bytes(b"")
    return train_case(tmp, with_row(db[2], 0, left=str(tmp / "empty_l.png")), ("empty_l.png", "empty"))


def truncated_image(tmp, db, ckpt):
    # last row: if it were found only when decoding, the other pairs' NSS entries would be cached
    data = (db[0] / "s2_1_r.png").read_bytes()
    (tmp / "half_r.png").write_bytes(data[: len(data) // 2])
    return train_case(tmp, with_row(db[2], -1, right=str(tmp / "half_r.png")), ("half_r.png", "truncated"))


def decompression_bomb(path: Path):
    """A valid 20000 x 20000 PNG of a few hundred KB: over twice PIL's pixel limit, which
    PIL refuses with its own DecompressionBombError."""
    Image.new("1", (20000, 20000)).save(path)
    return path


def decompression_bomb_predict(tmp, db, ckpt):
    bomb = decompression_bomb(tmp / "bomb.png")
    return Case("predict.py", ["--checkpoint", ckpt[2], bomb, bomb], ("bomb.png", "decompression bomb"))


def decompression_bomb_train(tmp, db, ckpt):
    bomb = decompression_bomb(tmp / "bomb_l.png")
    return train_case(tmp, with_row(db[2], 0, left=str(bomb)), ("bomb_l.png", "decompression bomb"))


def not_an_image(tmp, db, ckpt):
    (tmp / "notes_l.png").write_text("this is not a picture\n")
    return train_case(tmp, with_row(db[2], 0, left=str(tmp / "notes_l.png")), ("notes_l.png", "not an image"))


def size_mismatch(tmp, db, ckpt):
    right = grey(tmp / "wide_r.png", (56, 40))
    return train_case(tmp, with_row(db[2], 1, right=str(right)), ("wide_r.png", "56x40"))


def smaller_than_patch(tmp, db, ckpt):
    left, right = grey(tmp / "tiny_l.png", (20, 20)), grey(tmp / "tiny_r.png", (20, 20))
    return train_case(tmp, with_row(db[2], 0, left=str(left), right=str(right)), ("tiny_l.png", "20x20"))


def too_small_for_wavelet(tmp, db, ckpt):
    # 30x40 is below both rules (one 32x32 patch needs 33 px, 3 DT-CWT levels need 32 px);
    # the patch rule is checked first, while validating
    left, right = grey(tmp / "narrow_l.png", (30, 40)), grey(tmp / "narrow_r.png", (30, 40))
    return train_case(tmp, with_row(db[2], 0, left=str(left), right=str(right)), ("narrow_l.png", "30x40"))


def side_by_side_too_narrow(tmp, db, ckpt):
    # a 64x40 side-by-side file has 32x40 views: NSS would accept them, patches would not
    sbs = grey(tmp / "narrow_sbs.png", (64, 40))
    rows = [dict(r, sbs="") for r in db[2]]
    rows[0].update(left="", right="", sbs=str(sbs))
    return train_case(tmp, rows, ("narrow_sbs.png", "32x40"))


def non_finite_score(tmp, db, ckpt):
    return train_case(tmp, with_row(db[2], 1, score="nan"), ("manifest.csv", "row 3", "'nan'"))


def missing_score(tmp, db, ckpt):
    return train_case(tmp, with_row(db[2], 2, score=""), ("manifest.csv", "row 4", "no score"))


def duplicate_rows(tmp, db, ckpt):
    rows = db[2] + [dict(db[2][3])]
    return train_case(tmp, rows, ("s1_1_l.png", "duplicate"))


def unknown_database(tmp, db, ckpt):
    case = train_case(tmp, db[2], ("dataset.name", "bogus"), **{"dataset.name": "bogus"})
    return case


def missing_database_folder(tmp, db, ckpt):
    return train_case(tmp, db[2], ("/nonexistent", "dataset.root"),
                      **{"dataset.name": "live3d_phase1", "dataset.root": "/nonexistent",
                         "dataset.manifest": "null"})


def missing_mat_variable(tmp, db, ckpt):
    root = tmp / "live1"
    (root / "jp2k").mkdir(parents=True)
    for name in ("im2_1", "im3_1"):
        grey(root / "jp2k" / f"{name}_l.bmp", (40, 36))
        grey(root / "jp2k" / f"{name}_r.bmp", (40, 36))
    names = np.empty((1, 2), dtype=object)
    names[0, :] = ["jp2k\\im2_1.bmp", "jp2k\\im3_1.bmp"]
    refs = np.empty((1, 2), dtype=object)
    refs[0, :] = ["refimgs\\im2.bmp", "refimgs\\im3.bmp"]
    scipy.io.savemat(root / "data.mat", {"img_names": names, "ref_names": refs})
    return train_case(tmp, db[2], ("'dmos'", "data.mat"),
                      **{"dataset.name": "live3d_phase1", "dataset.root": root,
                         "dataset.manifest": "null"})


def unknown_config_key(tmp, db, ckpt):
    return train_case(tmp, db[2], ("train.epochz",), **{"train.epochz": 3})


def wrong_value_type(tmp, db, ckpt):
    return train_case(tmp, db[2], ("train.batch_size", "'many'"), **{"train.batch_size": "many"})


def split_without_scene(tmp, db, ckpt):
    rows = [r for r in db[2] if r["ref"] in ("scene0", "scene1")]
    return train_case(tmp, rows, ("dataset.split", "2 scene"), **{"dataset.split": "[0.6,0.2,0.2]"})


def cuda_without_gpu(tmp, db, ckpt):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available here")
    return train_case(tmp, db[2], ("device=cuda", "device=cpu"), device="cuda")


def checkpoint_of_other_shape_evaluate(tmp, db, ckpt):
    return Case("evaluate.py", ["--checkpoint", ckpt[0], "--out", tmp / "ev"], ("best.pt", "size mismatch"),
                [tmp / "ev"])


def checkpoint_of_other_shape_predict(tmp, db, ckpt):
    return Case("predict.py", ["--checkpoint", ckpt[0], "--manifest", db[1], "--out", tmp / "p.csv"],
                ("best.pt", "size mismatch"), [tmp / "p.csv"])


def corrupted_checkpoint_predict(tmp, db, ckpt):
    return Case("predict.py", ["--checkpoint", ckpt[1], "--manifest", db[1], "--out", tmp / "p.csv"],
                ("flipped.pt", "corrupt"), [tmp / "p.csv"])


# ---------------------------------------------- every entry point (issue: reliability)
def _good(tmp, size=(48, 40), name="v"):
    return grey(tmp / f"{name}_l.png", size), grey(tmp / f"{name}_r.png", size)


def views_of_different_sizes_predict(tmp, db, ckpt):
    left, _ = _good(tmp)
    right = grey(tmp / "wide_r.png", (56, 40))
    return Case("predict.py", ["--checkpoint", ckpt[2], left, right], ("wide_r.png", "differ in size"))


def views_smaller_than_a_patch_predict(tmp, db, ckpt):
    left, right = _good(tmp, (20, 20), "tiny")
    return Case("predict.py", ["--checkpoint", ckpt[2], left, right], ("tiny_l.png", "20x20"))


def side_by_side_too_narrow_predict(tmp, db, ckpt):
    sbs = grey(tmp / "narrow_sbs.png", (64, 40))
    return Case("predict.py", ["--checkpoint", ckpt[2], "--sbs", sbs], ("narrow_sbs.png", "32x40"))


def manifest_without_view_columns_predict(tmp, db, ckpt):
    path = write_manifest(tmp / "in", [{"image": "a.png", "score": 1}])
    return Case("predict.py", ["--checkpoint", ckpt[2], "--manifest", path, "--out", tmp / "p.csv"],
                ("manifest.csv",), [tmp / "p.csv"])


def manifest_missing_image_predict(tmp, db, ckpt):
    path = write_manifest(tmp / "in", with_row(db[2], 3, right=str(tmp / "gone_r.png")))
    return Case("predict.py", ["--checkpoint", ckpt[2], "--manifest", path, "--out", tmp / "p.csv"],
                ("gone_r.png",), [tmp / "p.csv"])


def maps_to_unwritable_folder_predict(tmp, db, ckpt):
    (tmp / "a_file").write_text("x")
    left, right = _good(tmp)
    return Case("predict.py", ["--checkpoint", ckpt[2], "--maps", tmp / "a_file" / "maps", left, right],
                ("cannot write", "a_file"))


def empty_checkpoint(tmp):
    (tmp / "empty.pt").write_bytes(b"")
    return tmp / "empty.pt"


def truncated_checkpoint(tmp, ckpt):
    data = ckpt[2].read_bytes()
    (tmp / "half.pt").write_bytes(data[: len(data) // 3])
    return tmp / "half.pt"


def newer_checkpoint(tmp, ckpt):
    from siqa.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp / "newer.pt", dict(load_checkpoint(ckpt[2]), format=99))
    return tmp / "newer.pt"


def other_network_checkpoint(tmp, ckpt, name="stereoqanet"):
    """A checkpoint of another network (its own weights and model.name): export.py serves
    the paper's network only."""
    import copy

    from siqa.checkpoint import load_checkpoint, save_checkpoint
    from siqa.models import create_model

    state = load_checkpoint(ckpt[2])
    cfg = copy.deepcopy(state["config"])
    cfg.setdefault("model", {})["name"] = name
    save_checkpoint(tmp / f"{name}.pt", dict(state, config=cfg, model=create_model(name).state_dict()))
    return tmp / f"{name}.pt"


def views_smaller_than_padnet_crops_predict(tmp, db, ckpt):
    """PAD-Net's 256x256 crops on 48x40 views: refused as training refuses them."""
    left, right = _good(tmp)
    return Case("predict.py", ["--checkpoint", other_network_checkpoint(tmp, ckpt, "padnet"), left, right],
                ("48x40", "256x256", "v_l.png"))


def other_network_export(tmp, db, ckpt):
    return Case("export.py", ["--checkpoint", other_network_checkpoint(tmp, ckpt), "--format", "torchscript",
                              "--out", tmp / "out" / "m.pt"], ("stereoqanet.pt", "stereoqanet", "bourbia2021"),
                [tmp / "out"])


def empty_checkpoint_predict(tmp, db, ckpt):
    left, right = _good(tmp)
    return Case("predict.py", ["--checkpoint", empty_checkpoint(tmp), left, right], ("empty.pt", "empty"))


def truncated_checkpoint_evaluate(tmp, db, ckpt):
    return Case("evaluate.py", ["--checkpoint", truncated_checkpoint(tmp, ckpt), "--out", tmp / "ev"],
                ("half.pt", "truncated"), [tmp / "ev"])


def newer_checkpoint_predict(tmp, db, ckpt):
    left, right = _good(tmp)
    return Case("predict.py", ["--checkpoint", newer_checkpoint(tmp, ckpt), left, right],
                ("newer.pt", "newer version"))


def newer_checkpoint_export(tmp, db, ckpt):
    return Case("export.py", ["--checkpoint", newer_checkpoint(tmp, ckpt), "--format", "torchscript",
                              "--out", tmp / "out" / "m.pt"], ("newer.pt", "newer version"), [tmp / "out"])


def empty_checkpoint_matrix(tmp, db, ckpt):
    return Case("evaluate.py", ["--matrix", "--checkpoint", ckpt[2], "--checkpoint", empty_checkpoint(tmp),
                                "--test", f"csv={db[1]}", "--out", tmp / "mx"], ("empty.pt",), [tmp / "mx"])


def truncated_checkpoint_export(tmp, db, ckpt):
    return Case("export.py", ["--checkpoint", truncated_checkpoint(tmp, ckpt), "--format", "torchscript",
                              "--out", tmp / "out" / "m.pt"], ("half.pt", "truncated"), [tmp / "out"])


def export_to_unwritable_folder(tmp, db, ckpt):
    (tmp / "a_file").write_text("x")
    return Case("export.py", ["--checkpoint", ckpt[2], "--format", "torchscript",
                              "--out", tmp / "a_file" / "m.pt"], ("cannot write", "m.pt"))


def compare_missing_run(tmp, db, ckpt):
    return Case("compare.py", [ckpt[2].parent, tmp / "no_such_run"], ("no_such_run",))


def compare_unfinished_run(tmp, db, ckpt):
    import shutil

    run = tmp / "unfinished"
    run.mkdir()
    for name in ("config.yaml", "splits.json"):
        shutil.copy(ckpt[2].parent / name, run / name)
    return Case("compare.py", [ckpt[2].parent, run], ("unfinished", "metrics.json"))


def compare_runs_on_different_splits(tmp, db, ckpt):
    from siqa import config

    cfg = config.load_config(ckpt[2].parent / "config.yaml")
    other = run_entry("train.py", *tiny_overrides(cfg["dataset"]["manifest"], tmp / "other", **{
        "train.epochs": 1, "dataset.split_seed": 7}))
    assert other.returncode == 0, other.stderr
    return Case("compare.py", [ckpt[2].parent, tmp / "other" / "run", "--label", "a", "--label", "b",
                               "--out", tmp / "cmp"], ("different",), [tmp / "cmp"])


def split_file_of_another_database(tmp, db, ckpt):
    return train_case(tmp, db[2], ("splits.json", "does not match"),
                      **{"dataset.split_file": ckpt[2].parent / "splits.json"})


def split_file_edited(tmp, db, ckpt):
    import json

    doc = json.loads((ckpt[2].parent / "splits.json").read_text())
    doc["splits"][0]["test"] = doc["splits"][0]["train"][:1] + doc["splits"][0]["test"]
    (tmp / "edited.json").write_text(json.dumps(doc))
    manifest = ckpt[2].parent / "config.yaml"
    from siqa import config

    cfg = config.load_config(manifest)
    return Case("train.py", tiny_overrides(cfg["dataset"]["manifest"], tmp / "work",
                                           **{"dataset.split_file": tmp / "edited.json"}),
                ("edited.json",), [tmp / "work"])


def nss_missing_image(tmp, db, ckpt):
    path = write_manifest(tmp / "in", with_row(db[2], 1, left=str(tmp / "gone_l.png")))
    return Case("-m siqa.nss", [path, "--cache-dir", tmp / "work" / "cache"], ("gone_l.png",),
                [tmp / "work"])


def nss_cache_unwritable(tmp, db, ckpt):
    (tmp / "a_file").write_text("x")
    path = write_manifest(tmp / "in", db[2])
    return Case("-m siqa.nss", [path, "--cache-dir", tmp / "a_file" / "cache", "--workers", "1",
                                 "--no-progress"],
                ("cannot write", "a_file"))


CASES = [
    missing_image, zero_byte_image, truncated_image, decompression_bomb_predict,
    decompression_bomb_train, not_an_image, size_mismatch,
    smaller_than_patch, too_small_for_wavelet, side_by_side_too_narrow, non_finite_score,
    missing_score, duplicate_rows, unknown_database, missing_database_folder,
    missing_mat_variable, unknown_config_key, wrong_value_type, split_without_scene,
    cuda_without_gpu, checkpoint_of_other_shape_evaluate, checkpoint_of_other_shape_predict,
    corrupted_checkpoint_predict,
    views_of_different_sizes_predict, views_smaller_than_a_patch_predict,
    side_by_side_too_narrow_predict, manifest_without_view_columns_predict,
    manifest_missing_image_predict, maps_to_unwritable_folder_predict, empty_checkpoint_predict,
    truncated_checkpoint_evaluate, newer_checkpoint_predict, newer_checkpoint_export,
    views_smaller_than_padnet_crops_predict, other_network_export,
    empty_checkpoint_matrix, truncated_checkpoint_export, export_to_unwritable_folder,
    compare_missing_run, compare_unfinished_run, compare_runs_on_different_splits,
    split_file_of_another_database,
    split_file_edited, nss_missing_image, nss_cache_unwritable,
]


def _files_under(path: Path):
    if not path.exists():
        return []
    if path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_file()]


def run_case(case, tmp):
    if not case.script.startswith("-m "):
        return run_entry(case.script, *case.args, cwd=tmp, timeout=TIMEOUT)
    return entry_points.run(case.script, case.args, cwd=tmp, timeout=TIMEOUT)  # python -m ...




@pytest.fixture(scope="module")
def outcomes(request, db, checkpoints, tmp_path_factory):
    """{case name: (tmp folder, Case, CompletedProcess) or the Skipped exception}."""
    selected = {item.callspec.params["make_case"].__name__ for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    prepared, results = {}, {}
    for make_case in CASES:
        if make_case.__name__ not in selected:
            continue
        tmp = tmp_path_factory.mktemp(make_case.__name__)
        try:
            prepared[make_case.__name__] = (tmp, make_case(tmp, db, checkpoints))
        except pytest.skip.Exception as skip:
            results[make_case.__name__] = skip

    def run(item):
        name, (tmp, case) = item
        try:
            return name, (tmp, case, run_case(case, tmp))
        except Exception as err:  # e.g. a timeout: reported by that case's test only
            return name, err

    results.update(map(run, prepared.items()))
    return results


PARAMS = [pytest.param(c, id=c.__name__) for c in CASES]


@pytest.mark.parametrize("make_case", PARAMS)
def test_bad_input_is_one_line_error(make_case, outcomes):
    outcome = outcomes[make_case.__name__]
    if isinstance(outcome, BaseException):
        raise outcome
    tmp, case, proc = outcome
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: ") and line[len("error: "):].strip(), line
    for culprit in case.culprits:
        assert str(culprit) in line, (culprit, line)
    for out in case.outputs:
        assert _files_under(out) == [], f"partial output left: {_files_under(out)}"
    # no NSS cache entry (train cases keep their cache in <tmp>/work/cache; the others use none)
    assert _files_under(tmp / "work" / "cache") == []
    assert not (tmp / "data").exists() and not (tmp / "runs").exists()  # nothing in the working folder
    print(f"{make_case.__name__}: {line}")
