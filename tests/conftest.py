"""Shared fixtures: a tiny stereo database in the CSV-manifest layout, and a way to run the
entry points as a user does (a subprocess, exit code and stderr)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import entry_points
import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

# Property tests draw the same examples on every run, so CI's verdict does not depend on a
# random draw; HYPOTHESIS_PROFILE=explore draws new ones (to hunt for inputs not yet tried).
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def make_tiny_database(folder: Path, scenes=8, levels=3, size=(80, 64), seed=0):
    """`scenes` scenes x (`levels` noise levels) stereo pairs of `size` (W, H), with a CSV
    manifest (left,right,score,ref,distortion,symmetric). Score = noise level (DMOS-like)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    w, h = size
    for s in range(scenes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = 128 + 60 * np.sin(xx / (3 + s)) * np.cos(yy / (4 + s)) + rng.normal(0, 5, (h, w))
        for level in range(levels):
            kind = "wn" if level % 2 else "blur"
            for eye, shift in (("l", 0), ("r", 2)):
                view = np.roll(base, shift, axis=1) + rng.normal(0, 12 * level, (h, w))
                Image.fromarray(np.clip(view, 0, 255).astype(np.uint8)).save(
                    folder / f"s{s}_{level}_{eye}.png")
            rows.append({"left": f"s{s}_{level}_l.png", "right": f"s{s}_{level}_r.png",
                         "score": 10.0 * level + s, "ref": f"scene{s}", "distortion": kind,
                         "symmetric": "true" if level < 2 else "false"})
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


def pytest_sessionfinish(session):
    entry_points.stop()


def needs_cuda(test):
    """Marked `cuda` (benchmarks/gpu_check.py runs `pytest -m cuda`) and skipped without a GPU."""
    import torch

    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(),
                                               reason="needs a CUDA GPU")(test))


@pytest.fixture
def process_numerics():
    """siqa.device.configure_numerics (and evaluate's use_run_threads) change
    process-wide switches: put them back after the test."""
    import torch

    threads = torch.get_num_threads()  # evaluate.py in-process sets the run's train.threads
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved[2:]
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on a 2-core machine running several test processes,
    OpenMP threads that wait for each other are many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    return make_tiny_database(tmp_path_factory.mktemp("tinydb"))


def load_script(relative_path):
    """A repository script that is not part of the package (a benchmark, docs/make_figures.py)
    imported as a module, so that a test calls its functions."""
    import importlib.util

    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_path():
    """PYTHONPATH for a subprocess: the repository first, then the caller's own (packages
    installed with `pip install --target DIR` reach the process only through it)."""
    return os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def run_entry(script, *args, cwd=None, timeout=600, env=None):
    """Run `python <script> args...` as a user would; returns the CompletedProcess. The
    process is a fork of a server that has imported torch and siqa (tests/entry_points.py);
    with `env` (variables read at an interpreter's start) a fresh interpreter."""
    if env is None:
        return entry_points.run(str(ROOT / script), args, cwd=cwd, timeout=timeout)
    full_env = {**os.environ, "PYTHONPATH": python_path(), **env}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def tiny_overrides(manifest, work: Path, **extra):
    """Overrides that point a run at the tiny database and keep every output inside `work`.
    The network is `tiny` (siqa/models/tiny.py: the paper network's inputs and outputs in
    20k parameters) unless `extra` names another: a test of the pipeline trains it in a
    fraction of the time and writes checkpoints of kilobytes."""
    # progress_every=0: no progress lines on stderr, which tests of one-line errors count
    # (on a loaded machine a stage may pass 10 s); tests/test_progress.py tests the lines
    items = {"dataset.name": "csv", "dataset.manifest": manifest, "out_dir": work / "run",
             "nss.cache_dir": work / "cache", "nss.workers": 1, "tensorboard.dir": work / "tb",
             "model.name": "tiny", "train.epochs": 2, "train.batch_size": 16, "train.threads": 1,
             "progress_every": 0,
             **extra}
    return [f"{k}={v}" for k, v in items.items()]


@pytest.fixture(scope="session")
def tiny_run(tiny_manifest, tmp_path_factory):
    """A 2-epoch train.py run of the paper's network on the tiny database, built once per
    session and shared (the API, export and maps tests score it): (work folder,
    CompletedProcess); the checkpoints are work/run/best.pt and last.pt."""
    work = tmp_path_factory.mktemp("train")
    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, work, **{"model.name": "bourbia2021"}))
    assert proc.returncode == 0, proc.stderr
    return work, proc


def synthetic_split(num_pairs=6, per_pair=50, device="cpu", seed=0):
    """A seeded random SplitData: patches ~ N(0, 0.2^2), scores in [0, 60), NSS in [0, 1)."""
    import torch

    from siqa.data.inputs import SplitData

    g = torch.Generator().manual_seed(seed)
    n = num_pairs * per_pair
    return SplitData(
        left=torch.randn(n, 1, 32, 32, generator=g) * 0.2,
        right=torch.randn(n, 1, 32, 32, generator=g) * 0.2,
        pair_index=torch.arange(num_pairs).repeat_interleave(per_pair),
        score=torch.rand(num_pairs, generator=g) * 60,
        nss=torch.rand(num_pairs, 108, generator=g),
    ).to(device)


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    """best.pt of the session's tiny run (the API and export tests)."""
    return tiny_run[0] / "run" / "best.pt"


@pytest.fixture(scope="module")
def model(checkpoint):
    """That checkpoint loaded through the Python API, on the CPU."""
    import siqa

    return siqa.load(checkpoint, device="cpu")


def train_epoch(model, optimizer, data, order, batch_size, nss_weight, amp_dtype=None, step=None):
    """One epoch of siqa.training.step.epoch_steps run to its end: its mean losses."""
    from siqa.training.concurrent import finish
    from siqa.training.step import epoch_steps

    return finish(epoch_steps(model, optimizer, data, order, batch_size, nss_weight, amp_dtype,
                              step=step))


def make_stereo_database(folder: Path, scenes=4, ref=True, size=(96, 72), seed=0):
    """A small RGB stereo database as a researcher makes one: per scene a pristine pair
    (score 0), JPEG, blur and white noise on both views, blur on the left view only (its right
    view a byte-identical copy of the pristine right view, under another name) and noise on the
    right view only (its left view the pristine left file itself); DMOS-like scores. The CSV
    manifest has a `ref` column only with `ref=True`. Returns the manifest's path."""
    import io

    from PIL import ImageFilter

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]

    def save(name, image):
        image.save(folder / name)
        return name

    def jpeg(image):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=8)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    def noise(image):
        noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 30, (h, w, 3))
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))

    def blur(image):
        return image.filter(ImageFilter.GaussianBlur(2.5))

    rows = []
    for s in range(scenes):
        base = np.stack([128 + 70 * np.sin(xx / (3 + s + c)) * np.cos(yy / (4 + s)) for c in range(3)], -1)
        base += rng.normal(0, 6, base.shape)
        left = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        right = Image.fromarray(np.clip(np.roll(base, 2, axis=1), 0, 255).astype(np.uint8))
        pl, pr = save(f"s{s}_l.png", left), save(f"s{s}_r.png", right)
        copy = f"s{s}_r_copy.png"
        (folder / copy).write_bytes((folder / pr).read_bytes())
        views = {
            "pristine": (pl, pr, 0.0, True),
            "jpeg": (save(f"s{s}_jpeg_l.png", jpeg(left)), save(f"s{s}_jpeg_r.png", jpeg(right)), 50.0, True),
            "blur": (save(f"s{s}_blur_l.png", blur(left)), save(f"s{s}_blur_r.png", blur(right)), 40.0, True),
            "wn": (save(f"s{s}_wn_l.png", noise(left)), save(f"s{s}_wn_r.png", noise(right)), 55.0, True),
            "blur_left": (f"s{s}_blur_l.png", copy, 25.0, False),
            "wn_right": (pl, f"s{s}_wn_r.png", 30.0, False),
        }
        for kind, (lv, rv, score, symmetric) in views.items():
            row = {"left": lv, "right": rv, "score": score + (s * 1.5 if score else 0.0)}
            if ref:
                row["ref"] = f"scene{s}"
            row.update(distortion=kind.split("_")[0], symmetric=str(symmetric).lower())
            rows.append(row)
    with open(folder / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "pairs.csv"
