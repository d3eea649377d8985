"""Export the patch-level network for use without this package (TorchScript or ONNX).

The paper's network (bourbia2021) only: a checkpoint of another network of siqa.models is
refused in one line (its inputs, outputs and metadata would each need their own rules);
siqa.load, predict.py and evaluate.py score every network.

    inputs   left, right : (B, 1, 32, 32) float32 patches, already locally normalised
    outputs  quality     : (B,)      task 2, one prediction per patch pair
             nss         : (B, 108)  task 1, the naturalness statistics per patch pair

What stays outside the exported graph, and must be done by the caller (the metadata
stored in the file, key "siqa", says it with the run's values):
  1. each view to 8-bit grey (ITU-R 601 luma, PIL convert('L')), then / 255;
  2. 32x32 patches at corners range(0, H - 32, 24) x range(0, W - 32, 24), the same
     positions in both views;
  3. per patch: (p - mean7) / (std7 + C), 7x7 box mean/std with symmetric boundary,
     C = 1 ("reference") or 1/255 ("contrast");
  4. the pair's score = the mean of `quality` over its patch pairs (same for `nss`).

B is dynamic (any batch) or fixed (`batch=N`: ONNX rejects any other size; a TorchScript
trace carries no shape check, so it runs at any B either way). ONNX goes through
`torch.onnx.export` (the dynamo exporter, which needs the `onnx` and `onnxscript`
packages); the file is checked against PyTorch with onnxruntime when it is installed.
Files are written atomically (a temporary file in the target folder, then a rename).
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from siqa.data.inputs import PATCH_C
from siqa.errors import UserError
from siqa.files import WriteFailed, writer_tag
from siqa.inference.api import NearConstantWarning, load
from siqa.models import DEFAULT
from siqa.runfolder import BEST, SPLIT_PLACEHOLDER

FORMATS = ("onnx", "torchscript")
INPUTS = ("left", "right")
OUTPUTS = ("quality", "nss")


@dataclass
class ExportResult:
    path: Path
    format: str
    batch: object  # "dynamic" or an int
    max_abs_diff: dict  # output name -> max |exported - PyTorch|, or None if not checked
    checked_with: str  # "torch.jit.load", "onnxruntime", or why it was not checked
    warning: str | None = None  # the network's near-constant warning, for the caller to print


def metadata(model, batch) -> dict:
    """What a user of the exported file needs to rebuild the rest of the pipeline."""
    return {
        "inputs": {name: ["B" if batch == "dynamic" else batch, 1, 32, 32] for name in INPUTS},
        "outputs": {"quality": ["B"], "nss": ["B", 108]},
        "grey": "8-bit ITU-R 601 luma (PIL convert('L')), divided by 255",
        "patches": "32x32 at corners range(0, H-32, 24) x range(0, W-32, 24), same in both views",
        "normalisation": model.normalisation,
        "normalisation_rule": "(p - mean7x7) / (std7x7 + C), symmetric boundary",
        "C": PATCH_C[model.normalisation],
        "pooling": "pair score = mean of quality over the pair's patch pairs",
        "database": model.database,
        "lower_better": model.lower_better,
    }


class _Contiguous(torch.nn.Module):
    """The network in plain (contiguous) memory layout, eval mode, float32, on the CPU."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, left, right):
        return self.network(left, right)


def parse_batch(text):
    if str(text) == "dynamic":
        return "dynamic"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"--batch: expected 'dynamic' or a positive integer, got {text!r}")
    return value


def export(checkpoint, fmt, out, batch="dynamic", check=True) -> ExportResult:
    """Export the network of `checkpoint` (a best.pt or last.pt of train.py) to `out`."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    batch = parse_batch(batch)
    out = Path(out)
    if out.is_dir():
        example = out / ("siqa.onnx" if fmt == "onnx" else "siqa.pt")
        raise UserError(f"--out {out} is a folder: give a file name (e.g. {example})")
    if fmt == "onnx":
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"ONNX export needs the {' and '.join(missing)} package"
                            f"{'s' if len(missing) > 1 else ''}: pip install {' '.join(missing)}")
    if Path(checkpoint).is_dir():
        raise UserError(f"checkpoint {checkpoint} is a run folder: export.py exports one network, "
                        f"give one split's {BEST} (RUN/{BEST} or RUN/{SPLIT_PLACEHOLDER}/{BEST}); "
                        "the mean of a run's splits is scored with siqa.load or predict.py")
    with warnings.catch_warnings():  # said once in the result, not before a refusal below
        warnings.simplefilter("ignore", NearConstantWarning)
        model = load(checkpoint, device="cpu")
    if model.name != DEFAULT:  # the graph and its metadata below are the paper network's
        raise UserError(f"checkpoint {checkpoint} holds a {model.name} network: export.py serves "
                        f"{DEFAULT} checkpoints (grey 32x32 patches, quality and nss); score this "
                        "one with siqa.load, predict.py or evaluate.py")
    network = model.network.to(memory_format=torch.contiguous_format).float().eval()
    module = _Contiguous(network).eval()
    example = _example(2 if batch == "dynamic" else batch, seed=0)
    meta = json.dumps(metadata(model, batch))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.{writer_tag()}.", suffix=".tmp")
    except OSError as err:  # a read-only folder, a file where a folder should be
        raise WriteFailed(err.errno, f"cannot write {out}: {err.strerror} ({err.filename})") from err
    os.close(fd)
    try:
        with warnings.catch_warnings():  # the exporters' deprecation and axis-naming notes
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            if fmt == "torchscript":
                _torchscript(module, example, tmp, meta)
            else:
                _onnx(module, example, tmp, meta, batch)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is not what a user expects
        os.replace(tmp, out)
    except OSError as err:  # e.g. the disk filled up while writing
        raise WriteFailed(err.errno, f"cannot write {out}: {err.strerror or err}; "
                          f"any previous {out.name} is unchanged") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    diffs, how = ({name: None for name in OUTPUTS}, "not checked")
    if check:
        diffs, how = compare(module, out, fmt, batch)
    warning = model.near_constant_message() if model.near_constant else None
    return ExportResult(out, fmt, batch, diffs, how, warning)


def _example(n, seed):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, 1, 32, 32, generator=generator) * 0.5 for _ in INPUTS)


def _torchscript(module, example, path, meta):
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
    torch.jit.save(traced, path, _extra_files={"siqa.json": meta})


def _onnx(module, example, path, meta, batch):
    dynamic = None
    if batch == "dynamic":
        dim = torch.export.Dim("batch")
        dynamic = ({0: dim}, {0: dim})
    try:
        program = torch.onnx.export(module, example, dynamo=True, input_names=list(INPUTS),
                                    output_names=list(OUTPUTS), dynamic_shapes=dynamic,
                                    verbose=False)
    except ImportError as err:  # a dependency of the exporter itself
        raise UserError(f"ONNX export needs a package that is not installed: {err}") from None
    program.model.metadata_props["siqa"] = meta
    program.save(path, external_data=False)


def read_metadata(path, fmt) -> dict:
    """The "siqa" metadata stored in an exported file."""
    if fmt == "torchscript":
        extra = {"siqa.json": ""}
        _jit_load(path, extra)
        return json.loads(extra["siqa.json"])
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props["siqa"])


def _jit_load(path, extra=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra or {})


def compare(module, path, fmt, batch):
    """Max |exported - PyTorch| per output on random patches (a batch size other than the
    traced one when the batch is dynamic)."""
    inputs = _example(5 if batch == "dynamic" else batch, seed=1)
    with torch.no_grad():
        want = [t.numpy() for t in module(*inputs)]
    if fmt == "torchscript":
        loaded = _jit_load(path)
        with torch.no_grad():
            got = [t.numpy() for t in loaded(*inputs)]
        how = "torch.jit.load"
    else:
        if importlib.util.find_spec("onnxruntime") is None:
            return {name: None for name in OUTPUTS}, "not checked: onnxruntime is not installed"
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(list(OUTPUTS), {name: t.numpy() for name, t in zip(INPUTS, inputs)})
        how = "onnxruntime"
    import numpy as np

    return {name: float(np.abs(g - w).max()) for name, g, w in zip(OUTPUTS, got, want)}, how
