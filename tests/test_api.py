"""siqa.load(...) and the model object: the same scores as predict.py and evaluate.py for
every kind of input, the patch grid, the naturalness statistics, and one-line errors."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

import siqa
from conftest import needs_cuda, run_entry
from siqa.errors import UserError
from siqa.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def manifest_rows(tiny_manifest):
    with open(tiny_manifest) as f:
        return list(csv.DictReader(f))


def paths(tiny_manifest, row):
    return tiny_manifest.parent / row["left"], tiny_manifest.parent / row["right"]


def test_scale_comes_from_the_checkpoint(model, manifest_rows):
    scores = [float(r["score"]) for r in manifest_rows]  # the tiny database's own scores
    assert model.score_range == (min(scores), max(scores)) == (0.0, 27.0)
    assert model.lower_better is True  # a CSV manifest without higher_is_better is DMOS-like
    assert model.database["name"] == "csv"
    assert "higher = worse" in model.describe_scale()


def test_auto_device_picks_cuda_when_available(checkpoint):
    chosen = siqa.load(checkpoint)  # device="auto"
    assert chosen.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert all(p.device.type == chosen.device.type for p in chosen.network.parameters())


def test_score_equals_evaluate_on_its_test_split(checkpoint, model, tiny_manifest, tmp_path):
    proc = run_entry("evaluate.py", "--checkpoint", checkpoint, "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "ev" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    lefts = [tiny_manifest.parent / r["name"].split("|")[0] for r in rows]
    rights = [tiny_manifest.parent / r["name"].split("|")[1] for r in rows]
    got = model.score(lefts, rights)
    want = np.array([float(r["prediction"]) for r in rows])
    assert got.shape == want.shape and len(rows) >= 3
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_score_equals_predict_for_views_side_by_side_and_manifest(checkpoint, model, tiny_manifest,
                                                                  manifest_rows, tmp_path):
    left, right = paths(tiny_manifest, manifest_rows[4])
    sbs = np.concatenate([np.asarray(Image.open(left)), np.asarray(Image.open(right))], axis=1)
    Image.fromarray(sbs).save(tmp_path / "sbs.png")
    value = lambda out: float(out.strip().splitlines()[-1].split("\t")[-1])
    a = run_entry("predict.py", "--checkpoint", checkpoint, left, right)
    b = run_entry("predict.py", "--checkpoint", checkpoint, "--sbs", tmp_path / "sbs.png")
    c = run_entry("predict.py", "--checkpoint", checkpoint, "--manifest", tiny_manifest,
                  "--out", tmp_path / "p.csv")
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr + b.stderr + c.stderr
    assert abs(model.score(left, right) - value(a.stdout)) <= 1e-6  # printed with 6 decimals
    assert abs(model.score(sbs=tmp_path / "sbs.png") - value(b.stdout)) <= 1e-6
    with open(tmp_path / "p.csv") as f:
        predicted = np.array([float(r["prediction"]) for r in csv.DictReader(f)])
    lefts, rights = zip(*(paths(tiny_manifest, r) for r in manifest_rows))
    np.testing.assert_allclose(model.score(list(lefts), list(rights)), predicted, rtol=0, atol=1e-6)


def test_arrays_pil_and_tensors_score_as_their_files(model, tiny_manifest, manifest_rows):
    left, right = paths(tiny_manifest, manifest_rows[5])
    want = model.score(left, right)
    lg, rg = np.array(Image.open(left)), np.array(Image.open(right))
    assert lg.dtype == np.uint8 and lg.ndim == 2
    inputs = {
        "uint8 arrays": (lg, rg),
        "PIL images": (Image.open(left), Image.open(right)),
        "float tensors 1xHxW in [0, 1]": (torch.from_numpy(lg)[None] / 255.0,
                                          torch.from_numpy(rg)[None] / 255.0),
        "uint8 tensors HxW": (torch.from_numpy(lg), torch.from_numpy(rg)),
        "float64 arrays in [0, 1]": (lg / 255.0, rg / 255.0),
    }
    for kind, (a, b) in inputs.items():
        assert model.score(a, b) == pytest.approx(want, abs=1e-6), kind
    # side by side, as an array and as a tensor
    sbs = np.concatenate([lg, rg], axis=1)
    assert model.score(sbs=sbs) == pytest.approx(want, abs=1e-6)
    assert model.score(sbs=torch.from_numpy(sbs)[None] / 255.0) == pytest.approx(want, abs=1e-6)


def test_colour_inputs_use_the_grey_conversion_of_files(model, tmp_path):
    rng = np.random.default_rng(3)
    colour = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(2)]
    for name, image in zip("lr", colour):
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    want = model.score(tmp_path / "l.png", tmp_path / "r.png")
    assert model.score(*colour) == pytest.approx(want, abs=1e-6)
    chw = [torch.from_numpy(c).permute(2, 0, 1).float() / 255 for c in colour]
    assert model.score(*chw) == pytest.approx(want, abs=1e-6)


def test_a_list_is_one_score_per_pair(model, tiny_manifest, manifest_rows):
    pairs = [paths(tiny_manifest, r) for r in manifest_rows[:5]]
    one_by_one = [model.score(a, b) for a, b in pairs]
    batched = model.score([a for a, _ in pairs], [b for _, b in pairs])
    assert isinstance(batched, np.ndarray) and batched.shape == (5,)
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-6)
    stacked = torch.stack([torch.from_numpy(np.array(Image.open(a)))[None] for a, _ in pairs])
    stacked_r = torch.stack([torch.from_numpy(np.array(Image.open(b)))[None] for _, b in pairs])
    np.testing.assert_allclose(model.score(stacked, stacked_r), one_by_one, rtol=0, atol=1e-6)


def test_patch_grid_matches_the_network_on_patches_cut_independently(model, tiny_manifest,
                                                                     manifest_rows):
    from siqa.data.patches import PATCH, STRIDE, normalise_patches

    left, right = paths(tiny_manifest, manifest_rows[7])
    grid = model.patch_scores(left, right)
    lg, rg = (np.asarray(Image.open(p), dtype=np.float64) / 255 for p in (left, right))
    assert grid.shape == (len(range(0, 64 - 32, 24)), len(range(0, 80 - 32, 24))) == (2, 2)
    cut = lambda v: torch.tensor(np.stack([v[y:y + PATCH, x:x + PATCH] for y in range(0, 64 - 32, STRIDE)
                                           for x in range(0, 80 - 32, STRIDE)]))
    c = 1.0 / 255 if model.normalisation == "contrast" else 1.0
    with torch.no_grad():
        quality, nss = model.network(normalise_patches(cut(lg), c).float()[:, None],
                                     normalise_patches(cut(rg), c).float()[:, None])
    np.testing.assert_allclose(grid.ravel(), quality.numpy(), rtol=0, atol=1e-5)
    assert grid.mean() == pytest.approx(model.score(left, right), abs=1e-12)
    nat = model.naturalness(left, right)
    np.testing.assert_allclose(nat.predicted, nss.double().mean(0).numpy(), rtol=0, atol=1e-5)


def test_naturalness_computed_equals_the_training_targets(model, tiny_run, tiny_manifest,
                                                          manifest_rows):
    from siqa.checkpoint import load_checkpoint
    from siqa.data import load_database
    from siqa.data.nss import nss_from_config

    cfg = load_checkpoint(tiny_run[0] / "run" / "best.pt")["config"]
    pairs = load_database("csv", manifest=tiny_manifest)[:2]
    targets = nss_from_config(pairs, Settings(cfg), progress=False)  # the run's cache
    for pair, target in zip(pairs, targets):
        nat = model.naturalness(pair.left, pair.right)
        assert nat.predicted.shape == nat.computed.shape == (108,)
        np.testing.assert_allclose(nat.computed, target, rtol=1e-9, atol=1e-12)
    from siqa.inference.api import Naturalness

    labels = Naturalness.labels()
    assert len(labels) == 108 and labels[0] == "a_R L1 o0" and labels[107] == "Sigma_LL L3 o5"


@needs_cuda
def test_cuda_scores_equal_cpu_scores(checkpoint, model, tiny_manifest, manifest_rows, tmp_path,
                                      process_numerics):
    """In float32 (the run's train.tf32=false) the GPU agrees with the CPU to 1e-4; with the
    default numerics on CUDA (TF32 convolutions, 10-bit mantissas) to 1 % of the scores'
    spread. siqa.load sets the run's switches for the process."""
    from siqa.checkpoint import load_checkpoint, save_checkpoint

    pairs = [paths(tiny_manifest, r) for r in manifest_rows]
    lefts, rights = [a for a, _ in pairs], [b for _, b in pairs]
    cpu = model.score(lefts, rights)
    state = load_checkpoint(checkpoint)
    state["config"]["train"].update(tf32=False, deterministic=True)
    save_checkpoint(tmp_path / "fp32.pt", state)
    gpu = siqa.load(tmp_path / "fp32.pt", device="cuda")
    assert gpu.device == torch.device("cuda", torch.cuda.current_device())
    assert next(gpu.network.parameters()).is_cuda
    assert not torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.deterministic
    np.testing.assert_allclose(gpu.score(lefts, rights), cpu, rtol=0, atol=1e-4)
    assert gpu.patch_scores(*pairs[0]).shape == (2, 2)
    tf32 = siqa.load(checkpoint, device="cuda")  # train.tf32=auto: on for CUDA
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    np.testing.assert_allclose(tf32.score(lefts, rights), cpu, rtol=0, atol=0.01 * np.ptp(cpu) + 1e-4)


def test_bad_inputs_are_one_line_user_errors(model, checkpoint, tiny_manifest, manifest_rows,
                                             tmp_path):
    left, right = paths(tiny_manifest, manifest_rows[0])
    lg = np.asarray(Image.open(left))
    cases = {
        "image not found": lambda: model.score(tmp_path / "nope.png", right),
        "got shape (64, 80, 2)": lambda: model.score(np.zeros((64, 80, 2), np.uint8), lg),
        "C = 1, 3 or 4": lambda: model.score(torch.zeros(5, 64, 80), torch.zeros(5, 64, 80)),
        "[0, 1] intensities": lambda: model.score(lg * 2.0, lg / 255.0),
        "differ in size": lambda: model.score(lg, lg[:, :60]),
        "too small": lambda: model.score(lg[:20, :20], lg[:20, :20]),
        "unsupported pixel type": lambda: model.score(lg.astype(np.int32), lg),
        "2 left views but 1 right": lambda: model.score([lg, lg], [lg]),
        "not both": lambda: model.score(lg, lg, sbs=lg),
        "a left and a right view": lambda: model.score(lg),
        "expected a file path": lambda: model.score(3, 4),
    }
    for expected, call in cases.items():
        with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            call()


def test_checkpoint_of_another_model_or_file_is_refused(checkpoint, tmp_path):
    from siqa.checkpoint import load_checkpoint, save_checkpoint
    from siqa.models.bourbia2021 import MultiTaskSIQA

    state = load_checkpoint(checkpoint)
    state["model"] = MultiTaskSIQA(nss_dim=12).state_dict()  # another head size
    save_checkpoint(tmp_path / "other.pt", state)
    with pytest.raises(UserError, match="does not fit this model"):
        siqa.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt is not a checkpoint but a text file"):
        siqa.load(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="checkpoint not found"):
        siqa.load(tmp_path / "missing.pt")
