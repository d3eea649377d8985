"""Checkpoints are plain torch.save archives that carry their own SHA-256: any PyTorch user
opens them with torch.load(weights_only=True); truncation and corruption are reported."""
import hashlib
import io
import zipfile

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from siqa.checkpoint import MAGIC, load_checkpoint, restore_rng, rng_state, save_checkpoint
from siqa.errors import UserError


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(6.0)}, "epoch": 3, "config": {"a": [1, 2]}}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 3
    assert loaded["config"] == {"a": [1, 2]} and set(loaded) == set(state)  # checksum entry removed
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed


def test_plain_torch_load_opens_it(tmp_path):
    state = {"model": {"w": torch.randn(3, 2), "h": torch.ones(2, dtype=torch.bfloat16)}, "epoch": 2}
    save_checkpoint(tmp_path / "c.pt", state)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(raw["model"]["w"], state["model"]["w"]) and raw["epoch"] == 2
    assert raw["sha256"] == load_checkpoint.__globals__["content_digest"](state)
    assert zipfile.is_zipfile(tmp_path / "c.pt")  # PyTorch's own zip format, no header before it


def test_values_weights_only_refuses_are_made_plain(tmp_path):
    state = {"best": {"srocc": np.float64(0.75), "n": np.int64(12), "ok": np.bool_(True)},
             "config": {"out_dir": tmp_path / "run", "label": np.str_("wn")},
             "scores": np.array([1.5, 2.5]), "groups": ("a", 1)}
    save_checkpoint(tmp_path / "c.pt", state)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # would raise on any numpy or Path
    assert raw["best"] == {"srocc": 0.75, "n": 12, "ok": True}
    assert [type(v) for v in raw["best"].values()] == [float, int, bool]
    assert raw["config"] == {"out_dir": str(tmp_path / "run"), "label": "wn"}
    assert type(raw["config"]["label"]) is str
    assert torch.equal(raw["scores"], torch.tensor([1.5, 2.5], dtype=torch.float64))
    assert raw["groups"] == ("a", 1)
    with pytest.raises(TypeError, match=r"config\.fn.*weights_only"):
        save_checkpoint(tmp_path / "d.pt", {"config": {"fn": print}})
    assert not (tmp_path / "d.pt").exists()


def _record_start(path, suffix):
    """Offset of the first byte of the zip entry whose name ends with `suffix`."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    data = path.read_bytes()
    name_len, extra_len = np.frombuffer(data[info.header_offset + 26 : info.header_offset + 30], "<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "tensor_byte"])
def test_damaged_checkpoint_is_detected(tmp_path, damage):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-100] ^= 0xFF
    elif damage == "tensor_byte":  # the zip stays valid, one weight changes: only the digest sees it
        data[_record_start(path, "data/0") + 123] ^= 0x01
    else:
        data = b""
    path.write_bytes(bytes(data))
    if damage == "tensor_byte":
        assert torch.load(path, weights_only=True)["model"]["w"].shape == (1000,)
    with pytest.raises(UserError, match="c.pt.*corrupt") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    if damage == "tensor_byte":
        assert "checksum mismatch" in str(err.value)


def test_changed_value_with_old_digest_is_detected(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 4, "split": {"test": ["a"]}})
    raw = torch.load(path, weights_only=True)
    raw["split"]["test"] = ["b"]  # edited by hand, checksum left as it was
    torch.save(raw, path)
    with pytest.raises(UserError, match="checksum mismatch"):
        load_checkpoint(path)


def test_file_without_checksum_is_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"other\.pt.*not a checkpoint written by this project"):
        load_checkpoint(tmp_path / "other.pt")


def test_first_format_still_loads(tmp_path):
    """The first format (magic line, hex SHA-256 of the payload, payload), written here by hand."""
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.arange(4.0)}, "epoch": 7}, buf)
    payload = buf.getvalue()
    old = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    (tmp_path / "old.pt").write_bytes(old)
    state = load_checkpoint(tmp_path / "old.pt")
    assert state["epoch"] == 7 and torch.equal(state["model"]["w"], torch.arange(4.0))
    damaged = bytearray(old)
    damaged[-50] ^= 0xFF
    (tmp_path / "old.pt").write_bytes(bytes(damaged))
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "old.pt")


def test_best_pt_opens_with_plain_torch_load(tiny_manifest, tmp_path, one_torch_thread):
    """What a PyTorch user does with a best.pt/last.pt, without this project's loader. The
    state is assembled as siqa/training/split_run.py does (model, SGD with momentum
    after one step, StepLR, RNG states, the resolved config, validation metrics with numpy
    scalars in them, split)."""
    from siqa import config
    from siqa.models.bourbia2021 import MultiTaskSIQA

    torch.manual_seed(0)
    model = MultiTaskSIQA()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 20, 0.1)
    x = torch.rand(4, 1, 32, 32)
    quality, nss = model(x, x.flip(-1))
    (quality.abs().mean() + nss.abs().mean()).backward()
    optimizer.step()
    scheduler.step()
    cfg = config.load_config(overrides=tiny_overrides(tiny_manifest, tmp_path))
    val = {"srocc": np.float64(0.8), "plcc": 0.9, "rmse": np.float32(1.5), "n": np.int64(4)}
    state = {"model": model.state_dict(), "epoch": 1, "best": {"epoch": 1, "val": val},
             "config": cfg, "split": {"train": ["a"], "val": ["b"], "test": ["c"]},
             "database": {"name": "csv", "higher_is_better": False, "score_min": 0.0,
                          "score_max": 27.0},
             "optimizer": optimizer.state_dict(), "rng": rng_state(),
             "scheduler": scheduler.state_dict()}
    save_checkpoint(tmp_path / "best.pt", state)

    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    rebuilt = MultiTaskSIQA()
    rebuilt.load_state_dict(raw["model"])  # strict: every key and shape
    rebuilt.eval(), model.eval()
    assert torch.equal(rebuilt(x, x)[0], model(x, x)[0])
    assert raw["config"] == cfg and raw["best"]["val"] == {"srocc": 0.8, "plcc": 0.9, "rmse": 1.5, "n": 4}
    resumed = torch.optim.SGD(rebuilt.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    resumed.load_state_dict(raw["optimizer"])
    ours = load_checkpoint(tmp_path / "best.pt")
    assert ours["epoch"] == 1 and ours["scheduler"] == scheduler.state_dict()


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_rng_state_restores_dropout_stream():
    torch.manual_seed(1)
    state = rng_state()
    a = torch.rand(5)
    restore_rng(state)
    assert torch.equal(torch.rand(5), a)
