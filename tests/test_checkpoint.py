"""Checkpoints are verified on load: truncation and corruption are reported, not read."""
import pytest
import torch

from siqa.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from siqa.errors import UserError


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(6.0)}, "epoch": 3, "config": {"a": [1, 2]}}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 3
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_checkpoint_is_detected(tmp_path, damage):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-100] ^= 0xFF
    else:
        data = b""
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="c.pt"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_rng_state_restores_dropout_stream():
    torch.manual_seed(1)
    state = rng_state()
    a = torch.rand(5)
    restore_rng(state)
    assert torch.equal(torch.rand(5), a)
