"""export.py: TorchScript and ONNX files that give the PyTorch outputs, carry the pooling
rule, and fail with one line on bad input."""
import importlib.util

import numpy as np
import pytest
import torch

from conftest import run_entry
from siqa.errors import UserError
from siqa.inference.export import export, read_metadata

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_onnx = pytest.mark.skipif(not (HAVE_ONNX and HAVE_ORT),
                                reason="ONNX test skipped: pip install onnx onnxscript onnxruntime")


def patches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 32, 32, generator=g) * 0.3, torch.randn(n, 1, 32, 32, generator=g) * 0.3


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_gives_the_pytorch_outputs_and_the_pooling_rule(checkpoint, model,
                                                                     tiny_manifest, tmp_path):
    from PIL import Image

    from siqa.data.patches import extract_patches

    result = export(checkpoint, "torchscript", tmp_path / "m.pt")
    assert result.checked_with == "torch.jit.load" and max(result.max_abs_diff.values()) <= 1e-5
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    left, right = patches(9, seed=5)  # not the batch size it was traced with
    with torch.no_grad():
        got, want = loaded(left, right), model.network(left, right)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=0, atol=1e-5)
    # the metadata is enough to score a pair without siqa.inference.api: patches, C, mean of quality
    meta = read_metadata(tmp_path / "m.pt", "torchscript")
    assert meta["normalisation"] == model.normalisation and meta["outputs"]["nss"] == ["B", 108]
    views = [np.asarray(Image.open(tiny_manifest.parent / f"s3_1_{e}.png")) for e in "lr"]
    a, b = (extract_patches(v, c=meta["C"])[:, None] for v in views)
    with torch.no_grad():
        pooled = loaded(a, b)[0].double().mean().item()
    assert pooled == pytest.approx(model.score(*views), abs=1e-5)


@needs_onnx
def test_onnx_dynamic_and_fixed_batch_give_the_pytorch_outputs(checkpoint, model, tmp_path):
    import onnxruntime

    result = export(checkpoint, "onnx", tmp_path / "m.onnx")
    assert result.checked_with == "onnxruntime" and max(result.max_abs_diff.values()) <= 1e-5
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["left", "right"]
    assert [o.name for o in session.get_outputs()] == ["quality", "nss"]
    for n in (1, 7):
        left, right = patches(n, seed=n)
        quality, nss = session.run(None, {"left": left.numpy(), "right": right.numpy()})
        with torch.no_grad():
            want_q, want_n = model.network(left, right)
        np.testing.assert_allclose(quality, want_q.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(nss, want_n.numpy(), rtol=0, atol=1e-5)
    meta = session.get_modelmeta().custom_metadata_map
    assert "mean of quality" in read_metadata(tmp_path / "m.onnx", "onnx")["pooling"]
    assert "siqa" in meta

    fixed = export(checkpoint, "onnx", tmp_path / "m4.onnx", batch=4)
    assert fixed.batch == 4 and max(fixed.max_abs_diff.values()) <= 1e-5
    session = onnxruntime.InferenceSession(str(tmp_path / "m4.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 1, 32, 32]
    left, right = patches(3, seed=0)
    with pytest.raises(Exception, match="(?i)dimension"):  # a fixed batch rejects any other size
        session.run(None, {"left": left.numpy(), "right": right.numpy()})


@pytest.mark.parametrize("absent, message", [
    (("onnxscript",), "needs the onnxscript package: pip install onnxscript"),
    (("onnx", "onnxscript"), "needs the onnx and onnxscript packages: pip install onnx onnxscript"),
])
def test_missing_onnx_packages_are_named(checkpoint, tmp_path, monkeypatch, absent, message):
    """Whatever this environment has installed: the absent ones are made absent, the others
    present (a bare spec is all the check looks at)."""
    from importlib.machinery import ModuleSpec

    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in absent else ModuleSpec(name, None))
    with pytest.raises(UserError, match=message):
        export(checkpoint, "onnx", tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_export_bad_inputs_are_one_line_errors(checkpoint, tmp_path):
    cases = [
        (["--checkpoint", tmp_path / "none.pt", "--format", "torchscript", "--out", tmp_path / "a.pt"],
         "checkpoint not found"),
        (["--checkpoint", checkpoint, "--format", "torchscript", "--out", tmp_path / "a.pt",
          "--batch", "0"], "--batch"),
        (["--checkpoint", checkpoint, "--format", "torchscript", "--out", tmp_path], "is a folder"),
    ]
    for args, message in cases:
        proc = run_entry("export.py", *args)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob(".*.tmp"))


def test_the_documented_metadata_snippet_reads_a_torchscript_file(checkpoint, tmp_path, monkeypatch):
    """docs/using-a-model.md's TorchScript lines, run as written on an exported file."""
    import re

    from conftest import ROOT
    from siqa.inference.export import export, read_metadata

    export(checkpoint, "torchscript", tmp_path / "siqa.pt")
    doc = (ROOT / "docs" / "using-a-model.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", doc.split("Reading that metadata", 1)[1], re.S).group(1)
    torchscript_part = snippet.split("\nimport onnx")[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(torchscript_part, scope)
    assert scope["meta"] == read_metadata(tmp_path / "siqa.pt", "torchscript")
    assert scope["meta"]["pooling"]
