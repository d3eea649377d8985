"""train.nss_weight per network: `auto` (25 for bourbia2021, 0 for the others), the optional
NSS head of multiscore, padnet and stereoqanet (train.nss_weight > 0); a network with
neither an NSS output nor a head is refused.

Without the head the networks are their originals (tests/test_models.py: parameter counts
and the golden numbers); with it, one nn.Linear(features, 108) built last, so the other
layers draw the same initial weights from the same seed.
"""
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from siqa import config
from siqa.build import model_kwargs, nss_head_of, spec_of
from siqa.data.inputs import SplitData
from siqa.errors import UserError
from siqa.models import count_parameters, create_model
from siqa.training.step import joint_loss

# network: (parameters without the head, the fused features the head reads, input size)
FUSED = {"stereoqanet": (8_821_313, 2048, 32), "multiscore": (10_389_956, 1536, 32),
         "padnet": (14_163_698, 512, 256)}


def _cfg(*overrides):
    return config.load_config(overrides=list(overrides))


@pytest.mark.parametrize("name, weight", [("bourbia2021", 25.0), ("multiscore", 0.0),
                                          ("stereoqanet", 0.0), ("padnet", 0.0)])
@pytest.mark.parametrize("dataset", ["demo", "live3d_phase1"])
def test_auto_nss_weight_per_network(name, weight, dataset):
    cfg = _cfg(f"model.name={name}", f"dataset.name={dataset}")
    assert cfg["train"]["nss_weight"] == weight
    assert not nss_head_of(cfg) and model_kwargs(cfg) == {}
    assert spec_of(cfg).predicts_nss == (name == "bourbia2021")


def test_explicit_nss_weight_wins_and_builds_the_head():
    for name in FUSED:
        cfg = _cfg(f"model.name={name}", "train.nss_weight=10")
        assert cfg["train"]["nss_weight"] == 10.0 and nss_head_of(cfg)
        assert spec_of(cfg).outputs[-1] == "nss"
        assert not create_model(name).spec.predicts_nss  # the class's spec is unchanged
    ablation = _cfg("train.nss_weight=0")  # bourbia2021's single-task ablation, as before
    assert ablation["train"]["nss_weight"] == 0.0 and spec_of(ablation).predicts_nss
    assert not nss_head_of(ablation)


@pytest.mark.parametrize("name", sorted(FUSED))
def test_the_head_adds_features_x_108_plus_108_and_moves_no_other_weight(name):
    without, features, size = FUSED[name]
    torch.manual_seed(0)
    plain = create_model(name).eval()
    torch.manual_seed(0)
    headed = create_model(name, nss_head=True).eval()
    assert count_parameters(plain) == without
    assert count_parameters(headed) == without + features * 108 + 108
    assert headed.nss_head.in_features == features and headed.nss_head.out_features == 108
    assert plain.nss_head is None and "nss" not in plain.spec.outputs
    assert headed.spec.outputs == plain.spec.outputs + ("nss",)
    mine, theirs = headed.state_dict(), plain.state_dict()
    assert set(mine) - set(theirs) == {"nss_head.weight", "nss_head.bias"}
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs)  # same draws: the head is last
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_plain, out_headed = plain(x, x), headed(x, x)
    assert len(out_headed) == len(out_plain) + 1 and out_headed[-1].shape == (2, 108)
    assert all(torch.equal(a, b) for a, b in zip(out_plain, out_headed))


def _split(channels=3, views=True):
    g = torch.Generator().manual_seed(2)
    return SplitData(left=torch.rand(8, channels, 32, 32, generator=g),
                     right=torch.rand(8, channels, 32, 32, generator=g),
                     pair_index=torch.arange(8) // 4, score=torch.tensor([10.0, 40.0]),
                     nss=torch.rand(2, 108, generator=g),
                     views=torch.tensor([[5.0, 20.0], [30.0, 50.0]]) if views else None)


def test_joint_loss_with_the_stereoqanet_head_is_l1_quality_plus_weighted_l1_nss():
    torch.manual_seed(0)
    model = create_model("stereoqanet", nss_head=True).eval()
    data, idx = _split(views=False), torch.arange(8)
    total, quality, nss = joint_loss(model, data, idx, nss_weight=10.0, spec=model.spec)
    q, n = model(data.left, data.right)
    pairs = data.pair_index
    l1_q, l1_n = F.l1_loss(q, data.score[pairs]), F.l1_loss(n, data.nss[pairs])
    assert torch.allclose(total, l1_q + 10.0 * l1_n)
    assert torch.allclose(quality, l1_q) and torch.allclose(nss, l1_n) and float(nss.detach()) > 0


def test_joint_loss_with_the_multiscore_head_keeps_its_view_terms():
    torch.manual_seed(0)
    model = create_model("multiscore", nss_head=True).eval()
    data, idx = _split(), torch.arange(8)
    total, quality, nss = joint_loss(model, data, idx, nss_weight=4.0, spec=model.spec)
    q, l, r, s, n = model(data.left, data.right)
    pairs = data.pair_index
    expected = (2 * F.l1_loss(q, data.score[pairs]) + F.l1_loss(l, data.views[pairs, 0])
                + F.l1_loss(r, data.views[pairs, 1]) + F.l1_loss(s, data.score[pairs])
                + 4.0 * F.l1_loss(n, data.nss[pairs]))
    assert torch.allclose(total, expected) and torch.allclose(nss, F.l1_loss(n, data.nss[pairs]))


def test_a_network_without_an_nss_output_or_head_is_refused_naming_the_key(monkeypatch):
    """Every network of siqa.models has an NSS output or head now; one without (padnet taken
    without its head here) is refused in one line, and its auto or 0 weight is not."""
    from dataclasses import replace

    from siqa.models import MODELS

    config.check_nss_weight(_cfg("model.name=padnet", "train.nss_weight=1"))
    monkeypatch.setattr(MODELS["padnet"], "spec", replace(MODELS["padnet"].spec, nss_head=False))
    with pytest.raises(UserError, match=r"train\.nss_weight=1\.0.*padnet") as err:
        config.check_nss_weight(_cfg("model.name=padnet", "train.nss_weight=1"))
    assert "\n" not in str(err.value)
    config.check_nss_weight(_cfg("model.name=padnet"))  # auto: 0
    config.check_nss_weight(_cfg("model.name=padnet", "train.nss_weight=0"))


def test_train_padnet_with_an_nss_weight(tmp_path):
    """PAD-Net's head trains on its random crops (each crop's targets: its pair's)."""
    from conftest import make_tiny_database, run_entry, tiny_overrides

    manifest = make_tiny_database(tmp_path / "db", scenes=5, levels=1, size=(256, 256))
    proc = run_entry("train.py", *tiny_overrides(manifest, tmp_path, **{
        "model.name": "padnet", "train.nss_weight": 1, "train.epochs": 1,
        "dataset.split": "[0.6,0.2,0.2]", "train.batch_size": 2}))
    assert proc.returncode == 0, proc.stderr
    assert " nss 0.0000)" not in proc.stdout
    card = json.loads((tmp_path / "run" / "metrics.json").read_text())["protocol"]
    assert card["model"]["nss_head"] and card["model"]["parameters"] == 14_163_698 + 512 * 108 + 108


def test_protocol_card_counts_the_head():
    from siqa.build import model_card

    card = model_card(_cfg("model.name=stereoqanet", "train.nss_weight=10"))
    assert card["nss_head"] and card["parameters"] == 8_821_313 + 2048 * 108 + 108
    assert card["spec"]["outputs"] == ["quality", "nss"]
    plain = model_card(_cfg("model.name=stereoqanet"))
    assert not plain["nss_head"] and plain["parameters"] == 8_821_313


def test_a_checkpoint_from_before_the_head_loads_without_it():
    """A stereoqanet run of before this key recorded train.nss_weight: 25.0 (ignored) and
    holds no head: it loads as it was trained."""
    from siqa.build import load_model

    torch.manual_seed(0)
    saved = create_model("stereoqanet")
    cfg = config.load_config(overrides=["device=cpu", "model.name=stereoqanet",
                                        "train.nss_weight=25"])
    model = load_model({"model": saved.state_dict(), "config": config.upgrade(cfg, saved.state_dict())},
                       torch.device("cpu"))
    assert model.nss_head is None and count_parameters(model) == 8_821_313


def test_train_stereoqanet_with_an_nss_weight(tiny_manifest, tmp_path):
    """train.py model.name=stereoqanet train.nss_weight=10: the NSS targets are computed (and
    cached), the head trains, and the checkpoint loads with its head and the same outputs."""
    from conftest import run_entry, tiny_overrides
    from siqa.build import load_model
    from siqa.checkpoint import load_checkpoint

    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, **{
        "model.name": "stereoqanet", "train.nss_weight": 10}))
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert "model stereoqanet" in first and "train.nss_weight=10.0 (recipe: 0.0)" in first
    assert any((tmp_path / "cache").rglob("*")), "no NSS targets were cached"
    assert " nss 0.0000)" not in proc.stdout  # the NSS loss is trained
    card = json.loads((tmp_path / "run" / "metrics.json").read_text())["protocol"]
    assert card["config"]["train"]["nss_weight"] == 10.0 and card["model"]["nss_head"]
    assert card["model"]["parameters"] == 8_821_313 + 2048 * 108 + 108
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    model = load_model(state, torch.device("cpu"))
    assert model.nss_head is not None and "nss" in model.spec.outputs
    rebuilt = create_model("stereoqanet", nss_head=True)
    rebuilt.load_state_dict(state["model"])
    if state["config"]["train"]["channels_last"]:  # the layout the run trained in
        rebuilt = rebuilt.to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got, want = model(x, x.flip(-1)), rebuilt.eval()(x, x.flip(-1))
    assert len(got) == 2 and got[1].shape == (4, 108)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_resuming_a_run_from_before_the_head_is_one_line(tiny_manifest, tmp_path):
    """A stereoqanet run written before train.nss_weight had an effect recorded 25.0 and holds
    no head: --resume would build the head and fail in load_state_dict (a traceback); it is
    one line naming last.pt, exit 2, and its checkpoints and reports stay as they were
    (config.yaml and splits.json are rewritten by every resume before training starts)."""
    from conftest import run_entry, tiny_overrides

    overrides = tiny_overrides(tiny_manifest, tmp_path, **{"model.name": "stereoqanet",
                                                          "train.epochs": 1})
    assert run_entry("train.py", *overrides).returncode == 0
    saved = tmp_path / "run" / "config.yaml"
    recorded = yaml.safe_load(saved.read_text())
    assert recorded["train"]["nss_weight"] == 0.0  # auto, resolved
    recorded["train"]["nss_weight"] = 25.0  # what the former code recorded
    saved.write_text(yaml.safe_dump(recorded))
    kept = ("best.pt", "last.pt", "metrics.json", "predictions.csv")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.name in kept}
    assert len(before) == 4
    proc = run_entry("train.py", "--resume", f"out_dir={tmp_path / 'run'}", "train.epochs=2")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "last.pt has no NSS head" in lines[0] and "stereoqanet" in lines[0]
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.name in kept}
    assert after == before
