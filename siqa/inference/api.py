"""Using a trained model from Python: `siqa.load(checkpoint)` and the model object it returns.

    model = siqa.load("runs/demo/best.pt", device="auto")
    model.score("l.png", "r.png")            -> float, on the database's scale
    model.score([l1, l2], [r1, r2])          -> numpy array, one score per pair
    model.score(sbs="pair.png")              -> float (left half = left view)
    model.patch_scores(l, r)                 -> (rows, cols) grid of patch predictions
    model.naturalness(l, r)                  -> Naturalness(predicted, computed): 108 + 108
    model.lower_better, model.score_range, model.database, model.name, model.spec
    model.near_constant                      -> True where its run's validation predictions
                                                (a final fit's: its training predictions) were
                                                near constant (NearConstantWarning on load)

    siqa.load("runs/mine-kfold")             a run folder: the mean of its splits' best.pt
                                             (FoldEnsemble, siqa/inference/ensemble.py)

Every network of siqa.models is served: the checkpoint's `model.name` builds the network
(siqa.build.load_model) and its `spec` (siqa/models/spec.py) says which patches to cut.
What one call does (the same steps, in the same order, and the same patch functions as
training's test, `predict.py` and `evaluate.py`, so the numbers agree to float round-off):

    path | numpy array | PIL image | tensor            (one pair, or a list of pairs)
      -> two 8-bit views as files are read for training: grey (PIL convert('L')), or RGB
         (PIL convert('RGB')) for a colour network
      -> patches as the spec asks                                       (P, C, S, S) x 2
           bourbia2021  grey 32x32, stride 24, the run's local normalisation
                        (siqa.data.patches.extract_patches)
           others       spec.patch squares on the spec.grid corners, / 255
                        (siqa.data.patches.view_patches; StereoQA-Net standardises inside
                        the network with its training split's statistics)
      -> the one scoring path (siqa.scoring.run_batches): batches of 128 patches (CPU) /
         4096 (GPU), cut as one stacked tensor would be
           output 0: quality (P,)         "nss" output (task 1), where there is one: (P, 108)
      -> mean over the pair's patches (siqa.scoring.pair_means): the score | predicted NSS
      -> in grid order (rows, cols): the patch map  |  siqa.nss on the views: computed NSS

A network with several outputs (Multi-score: quality, left, right, stereo) is scored by its
first, "quality", as training scores it. A view too small for one patch of the network
(PAD-Net: 256x256) is a one-line UserError, as in training. `naturalness` needs a network
that predicts the NSS statistics.

Inputs: a file path; a numpy array H x W (grey) or H x W x 3/4 (RGB/RGBA); a PIL image; a
tensor H x W or C x H x W (C = 1 or 3). uint8 values are used as they are; float values are
taken as [0, 1] intensities and rounded to 8 bits (x * 255), because the network only ever
saw 8-bit views. Colour goes through PIL's convert('L') like a colour file for a grey
network; grey goes through convert('RGB') (three equal channels) for a colour one. A list
(or a 4-D array/tensor: N x H x W x C for numpy, N x C x H x W for torch) is a batch of pairs.

Patches are streamed: a list of any length is cut, decoded and scored in pieces, but the
batches the network sees are the same as if every patch had been stacked at once (what
`evaluate.py` does), so the scores are bit-for-bit the same on one device.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from siqa.build import amp_dtype_of, load_model, read_checkpoint
from siqa.data.inputs import PATCH_C
from siqa.data.patches import extract_patches, patch_grid, spec_corners, view_patches
from siqa.data.records import describe_scale
from siqa.device import select_device
from siqa.errors import UserError
from siqa.evaluation.metrics import near_constant_message as spread_message
from siqa.imageio import grey_cv2, grey_pil, split_side_by_side, view_rgb
from siqa.inference.ensemble import FoldEnsemble, load_run
from siqa.models import DEFAULT, MODELS
from siqa.nss.features import nss_features
from siqa.scoring import Scorer, batch_size_for, patch_mean, run_batches
from siqa.settings import Settings

__all__ = ["load", "StereoIQA", "FoldEnsemble", "Naturalness", "PairViews", "NearConstantWarning"]



class NearConstantWarning(UserWarning):
    """The checkpoint's network predicted about the same score for every pair of its run's
    validation split (siqa.evaluation.metrics.prediction_spread): it has not learnt."""

def load(checkpoint, device="auto") -> StereoIQA | FoldEnsemble:
    """The model of a checkpoint written by train.py (best.pt or last.pt), ready to score; or,
    given a run folder, the mean of the best.pt of every split the run tested (a FoldEnsemble:
    after k-fold, the fold models; siqa/inference/ensemble.py). A folder without a tested
    split is a one-line UserError.

    device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N" or a torch.device.
    On CUDA, the run's TF32 and cuDNN switches (train.tf32, train.deterministic) are set for
    the process, as evaluate.py sets them: PyTorch holds them process-wide, so the model
    loaded last decides them.
    A network whose run measured near-constant validation predictions (`near_constant`) is
    loaded with a NearConstantWarning.
    """
    device = select_device(device)  # a CUDA device with its index, or a one-line UserError
    if Path(checkpoint).is_dir():
        return load_run(checkpoint, lambda path: load(path, device))
    state = read_checkpoint(checkpoint, map_location=device)
    cfg = state["config"]
    settings = Settings(cfg)
    network = load_model(state, device, source=checkpoint)  # the network of model.name
    model = StereoIQA(network, state["database"], normalisation=settings.patches.normalisation, device=device,
                      nss={"marginal": settings.nss.marginal, "preprocess": settings.nss.preprocess},
                      patch_dtype=getattr(torch, settings.train.patch_dtype),
                      amp_dtype=amp_dtype_of(cfg, device), source=str(checkpoint),
                      name=settings.model.name, **recorded_spread(state.get("best") or {}))
    if model.near_constant:
        warnings.warn(model.near_constant_message(), NearConstantWarning, stacklevel=2)
    return model


def recorded_spread(best) -> dict:
    """What a checkpoint's run measured of its predictions' spread (its "best"): on the
    validation pairs at the best epoch, or for a final fit without validation on its training
    pairs; {"validation_spread": None} where it recorded neither."""
    if best.get("val"):
        return {"validation_spread": best["val"].get("spread")}
    if best.get("train"):
        return {"validation_spread": best["train"].get("spread"), "spread_of": "training"}
    return {"validation_spread": None}


@dataclass
class PairViews:
    """The two 8-bit views of one pair (grey, or RGB for a colour network) and a name for
    messages and file names."""

    left: np.ndarray  # uint8 H x W, or H x W x 3
    right: np.ndarray
    name: str


@dataclass
class Naturalness:
    """The 108 NSS statistics of docs/method.md#the-108-numbers (index 18 * p + s, p in `PARAMETERS`,
    s = 6 * (level - 1) + orientation), predicted by task 1 (mean over the pair's patches)
    and computed from the views. Shapes (108,) for one pair, (N, 108) for a list."""

    predicted: np.ndarray
    computed: np.ndarray

    PARAMETERS = ("a_R", "scale_R", "Sigma_RR", "Sigma_RL", "Sigma_LR", "Sigma_LL")

    @classmethod
    def labels(cls):
        """'a_R L1 o0' ... 'Sigma_LL L3 o5', in index order."""
        return [f"{p} L{s // 6 + 1} o{s % 6}" for p in cls.PARAMETERS for s in range(18)]


class StereoIQA:
    """A trained stereo IQA network with what is needed to use it: the patches its `spec`
    asks for, the patch normalisation of its run and the scale of the database it learnt
    (see the module docstring).

    Any module with forward(left, right) -> (quality (B,), nss (B, K)) on (B, 1, 32, 32)
    patches can be wrapped (a module without a `spec` is taken for the paper's network),
    which is how the tests build models with known answers.
    """

    def __init__(self, network, database, normalisation="reference", device="cpu", nss=None,
                 patch_dtype=torch.float32, amp_dtype=None, source="the model", name=None,
                 validation_spread=None, spread_of="validation"):
        if normalisation not in PATCH_C:
            raise UserError(f"{source}: unknown patch normalisation {normalisation!r} "
                            f"(expected one of {', '.join(PATCH_C)})")
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.database = dict(database)
        self.normalisation = normalisation
        self.nss_settings = {"marginal": "mle0", "preprocess": "reference",
                             **{k: v for k, v in (nss or {}).items() if k in ("marginal", "preprocess")}}
        self.patch_dtype = patch_dtype
        self.amp_dtype = amp_dtype
        self.source = source
        self._c = PATCH_C[normalisation]
        # what the network consumes and predicts (siqa/models/spec.py), as the engine reads it
        self.spec = getattr(network, "spec", MODELS[DEFAULT].spec)
        self.name = name or next((n for n, cls in MODELS.items() if type(network) is cls), DEFAULT)
        self._nss_output = self.spec.outputs.index("nss") if self.spec.predicts_nss else None
        self._outputs = (0,) if self._nss_output is None else (0, self._nss_output)
        self._batch = batch_size_for(self.device)
        # what its run measured on its validation predictions (best epoch; None: not recorded),
        # or on its training predictions (spread_of="training": a final fit without validation)
        self.validation_spread, self.spread_of = validation_spread, spread_of

    # -- what the scores mean -------------------------------------------------------------
    @property
    def lower_better(self) -> bool:
        """True for DMOS-like databases (LIVE, the demo): a higher score is a worse pair."""
        return not self.database["higher_is_better"]

    @property
    def score_range(self):
        """(min, max) of the subjective scores of the database the model was trained on."""
        return float(self.database["score_min"]), float(self.database["score_max"])

    def describe_scale(self) -> str:
        return describe_scale(self.database)

    @property
    def near_constant(self):
        """True where the run's validation predictions (at the checkpoint's epoch; a final
        fit's: its training predictions) were near constant
        (siqa.evaluation.metrics.prediction_spread), False where they spread; None for a
        checkpoint that does not record it (written before this check existed)."""
        return (self.validation_spread or {}).get("near_constant")

    def near_constant_message(self) -> str:
        """The one-line warning of a near-constant model (NearConstantWarning's text)."""
        return spread_message(self.validation_spread,
                              f"{self.source}: its run's {self.spread_of} predictions")

    def __repr__(self):
        return (f"StereoIQA({self.source}, {self.name}, database={self.database['name']!r}, "
                f"lower_better={self.lower_better}, device={self.device})")

    # -- scoring --------------------------------------------------------------------------
    def score(self, left=None, right=None, *, sbs=None):
        """Score of one pair (a float) or of a list of pairs (a float64 array)."""
        single, pairs = pairs_of(left, right, sbs)
        scores = np.array([score for score, _, _, _ in self._run_pairs(pairs)])
        return float(scores[0]) if single else scores

    def score_pairs(self, pairs):
        """Scores of (left, right_or_None) items, None meaning `left` is side-by-side (the
        shape of a manifest, where both kinds may be mixed)."""
        return np.fromiter(self.iter_scores(pairs), dtype=np.float64)

    def iter_scores(self, pairs):
        """score_pairs as a generator over any iterable of pairs: one score per pair as soon
        as its patches are through the network (the same numbers), with only the pairs of
        one batch in memory (predict.py --manifest on a long list)."""
        items = (PairSource(left, right, None) for left, right in pairs)
        for score, _, _, _ in self._run_pairs(items):
            yield float(score)

    def patch_scores(self, left=None, right=None, *, sbs=None):
        """The (rows, cols) grid of patch predictions (row-major over the patch corners of
        the network's spec: stride 24 for the paper's); its mean is the pair's score. A list
        gives a list of grids."""
        single, pairs = pairs_of(left, right, sbs)
        grids = [q.astype(np.float64).reshape(grid) for _, q, _, grid in self._run_pairs(pairs)]
        return grids[0] if single else grids

    def naturalness(self, left=None, right=None, *, sbs=None) -> Naturalness:
        """Task 1's 108 predicted statistics (mean over patches) next to the 108 computed
        from the pair (siqa.nss with the run's settings; views read as the training targets
        were: OpenCV's grey conversion for files, PIL's for arrays and tensors)."""
        single, pairs = pairs_of(left, right, sbs)
        predicted = self._predicted_nss(pairs)
        computed = []
        for pair in pairs:
            views = pair.views(for_nss=True)
            try:
                computed.append(nss_features(views.left, views.right, **self.nss_settings))
            except ValueError as err:
                raise UserError(f"cannot compute NSS statistics of {pair.name}: {err}") from None
        computed = np.stack(computed)
        return Naturalness(predicted[0], computed[0]) if single else Naturalness(predicted, computed)

    def predicted_naturalness(self, left=None, right=None, *, sbs=None):
        """Task 1's 108 predicted statistics alone (mean over the pair's patches; (108,) for
        one pair, (N, 108) for a list), without computing them from the views."""
        single, pairs = pairs_of(left, right, sbs)
        predicted = self._predicted_nss(pairs)
        return predicted[0] if single else predicted

    def _predicted_nss(self, pairs):
        if self._nss_output is None:
            raise UserError(f"{self.source} holds a {self.name} network, which predicts no NSS "
                            "statistics: naturalness needs a network with the NSS task "
                            "(such as bourbia2021)")
        return np.stack([nss.mean(axis=0, dtype=np.float64) for _, _, nss, _ in self._run_pairs(pairs)])

    # -- the one path every method goes through -------------------------------------------
    def _run_pairs(self, pairs):
        """Yields, per pair and in order, (score, quality (P,), nss (P, K), (rows, cols)):
        the mean of its patch predictions and the network's float32 outputs as numpy arrays,
        through siqa.scoring's batches (the cut of one stacked tensor)."""
        with _THREADS_LOCK:  # see _THREADS_LOCK
            scorer = Scorer("eager", self.network, self.amp_dtype, outputs=self._outputs)
            for outputs, grid in run_batches(scorer, self._patches(pairs), self._batch, self.device):
                quality = outputs[0]
                nss = outputs[1] if len(outputs) > 1 else quality.new_zeros((len(quality), 0))
                yield patch_mean(quality), quality.float().cpu().numpy(), nss.float().cpu().numpy(), grid

    def _patches(self, pairs):
        """(left, right, (rows, cols)): the patches of each pair and their grid, cut as they
        are needed."""
        threads = torch.get_num_threads()
        for pair in pairs:
            views = pair.views(channels=self.spec.channels)
            torch.set_num_threads(1)  # per-image ops are small: one thread is faster (measured)
            try:
                a, grid = self._cut(views.left, views.name)
                b, _ = self._cut(views.right, views.name)
            finally:
                torch.set_num_threads(threads)
            yield a, b, grid

    def _cut(self, view, name):
        """(P, C, S, S) patches of one view as the network's spec asks, and their (rows,
        cols) grid: the functions the training path cuts them with (siqa.data.patches)."""
        if self.spec.normalisation == "local":  # the paper's network (as split_data)
            patches = extract_patches(view, self.patch_dtype, source=name, c=self._c)
            return patches.unsqueeze(1), patch_grid(*view.shape)
        rows, cols = spec_corners(*view.shape[:2], self.spec)
        return view_patches(view, self.spec, self.patch_dtype, source=name), (len(rows), len(cols))


# torch's CPU thread count is one setting for the whole process: _run_pairs sets it to 1 for
# the per-image work and back for the network, and a convolution's float32 sums depend on it.
# Calls from several threads would change it under each other (scores that differ from serial
# calls, and a caller's setting lost), so they take turns; torch's own threads still run the
# network in parallel. Reentrant: a method may call another.
_THREADS_LOCK = threading.RLock()


# -- inputs -------------------------------------------------------------------------------
class PairSource:
    """One pair as the user gave it (left + right, or a side-by-side `left` with right None);
    decoded on demand, so that a long list is never held in memory at once."""

    def __init__(self, left, right, name):
        self.left, self.right = left, right
        self.name = name or _describe(left, right)

    def views(self, for_nss=False, channels=1) -> PairViews:
        """8-bit grey views (files: PIL's conversion, OpenCV's `for_nss`), or RGB ones for
        `channels` 3 (files: PIL convert('RGB'), as the training path reads them)."""
        if for_nss:
            read, mode = grey_cv2, "L"
        else:
            read, mode = (grey_pil, "L") if channels == 1 else (view_rgb, "RGB")
        if self.right is None:
            lv, rv = split_side_by_side(_as_view(self.left, "side-by-side image", read, mode))
        else:
            lv = _as_view(self.left, "left view", read, mode)
            rv = _as_view(self.right, "right view", read, mode)
            if lv.shape != rv.shape:
                raise UserError(f"left/right views differ in size: {_short(self.left)} is "
                                f"{lv.shape[1]}x{lv.shape[0]}, {_short(self.right)} is "
                                f"{rv.shape[1]}x{rv.shape[0]} (width x height)")
        return PairViews(lv, rv, self.name)


def pairs_of(left, right, sbs):
    """(single, [PairSource]) from score()'s arguments."""
    if sbs is not None:
        if left is not None or right is not None:
            raise UserError("give either left and right views, or sbs=, not both")
        items = _as_list(sbs)
        single = items is None
        items = [sbs] if single else items
        return single, [PairSource(x, None, None) for x in items]
    if left is None or right is None:
        raise UserError("give a left and a right view (or a side-by-side image as sbs=)")
    lefts, rights = _as_list(left), _as_list(right)
    if (lefts is None) != (rights is None):
        raise UserError("left and right must both be single views or both be lists of views")
    if lefts is None:
        return True, [PairSource(left, right, None)]
    if len(lefts) != len(rights):
        raise UserError(f"{len(lefts)} left views but {len(rights)} right views")
    if not lefts:
        raise UserError("no pairs to score (empty lists)")
    return False, [PairSource(a, b, None) for a, b in zip(lefts, rights)]


def _as_list(x):
    """The items of a batch, or None for one image."""
    if isinstance(x, (list, tuple)):
        return list(x)
    if isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 4:
        return list(x)
    return None


def _describe(left, right):
    if right is None:
        return _short(left)
    return f"{_short(left)} / {_short(right)}"


def _short(x):
    if isinstance(x, (str, Path)):
        return str(x)
    shape = "x".join(map(str, getattr(x, "shape", getattr(x, "size", ()))))
    return f"{type(x).__name__} {shape}".strip()


def _as_view(image, what, read_file=grey_pil, mode="L") -> np.ndarray:
    """8-bit view of one input, grey H x W (`mode` "L") or H x W x 3 ("RGB"), converted as
    PIL converts (see the module docstring for the rules)."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        return read_file(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert(mode))
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu()
        if arr.ndim == 3:
            if arr.shape[0] not in (1, 3, 4):
                raise UserError(f"{what}: a tensor must be H x W or C x H x W with C = 1, 3 or 4; "
                                f"got shape {tuple(arr.shape)}")
            arr = arr.permute(1, 2, 0)
        arr = arr.numpy()
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise UserError(f"{what}: expected a file path, numpy array, PIL image or tensor, "
                        f"got {type(image).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise UserError(f"{what}: expected a grey H x W or colour H x W x 3 image "
                        f"(C x H x W for tensors), got shape {tuple(arr.shape)}")
    arr = _to_uint8(arr, what)
    given = "L" if arr.ndim == 2 else "RGB" if arr.shape[2] == 3 else "RGBA"
    if given != mode:
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr), given).convert(mode))
    return np.ascontiguousarray(arr)


def _to_uint8(arr, what):
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise UserError(f"{what}: the image holds NaN or infinite values")
        low, high = float(arr.min()), float(arr.max())
        if low < 0 or high > 1:
            raise UserError(f"{what}: float images must hold [0, 1] intensities (found "
                            f"{low:.4g} .. {high:.4g}); divide 8-bit values by 255")
        return np.rint(arr.astype(np.float64) * 255).astype(np.uint8)
    raise UserError(f"{what}: unsupported pixel type {arr.dtype} (use uint8, or floats in [0, 1])")
