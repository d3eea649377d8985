"""siqa.models: the registry, model.name, the specs, and the ports against their originals.

The golden numbers (tests/data/golden_networks.json) were computed by
scripts/golden_networks.py, which loads the same seeded weights into the authors' own code
(Multi-score SIQA and PAD-Net in PyTorch, StereoQA-Net in Keras 3 / TensorFlow) and checks
outputs and gradients against the port; the maximum differences it measured are stored
beside them (docs/models.md). Here the port alone must reproduce those numbers.
"""
import json
from pathlib import Path

import pytest
import torch

from siqa import config
from siqa.errors import UserError
from siqa.models import MODELS, InputSpec, count_parameters, create_model, list_models

TOY_RECIPE = {"train.epochs": 2, "train.optimizer": "sgd", "train.lr": 0.05, "train.lr_step": 0,
              "train.lr_gamma": 0.1, "train.weight_decay": 0.0, "train.batch_size": 8,
              "train.nss_weight": 0.0}
GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_networks.json").read_text())
# the paper's network is counted by hand in test_bourbia2021.py; StereoQA-Net against the
# original Keras model's count, recorded with the golden outputs
PARAMETERS = {"multiscore": 10_389_956, "padnet": 14_163_698,
              "stereoqanet": GOLDEN["stereoqanet"]["max_abs_diff_vs_original"]["keras parameters"]}


def test_list_models_and_default():
    assert list_models() == ["bourbia2021", "multiscore", "padnet", "stereoqanet", "tiny"]
    assert config.load_config()["model"]["name"] == "bourbia2021"
    assert config.upgrade({})["model"]["name"] == "bourbia2021"  # a config from before model.name


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_counts(name):
    torch.manual_seed(0)
    assert count_parameters(create_model(name)) == PARAMETERS[name]


def test_siqa_model_alias_is_the_papers_network():
    from siqa.models.bourbia2021 import MultiTaskSIQA

    assert MODELS["bourbia2021"] is MultiTaskSIQA


def test_checkpoint_without_model_name_loads_as_bourbia2021():
    """A checkpoint's config from before model.name existed builds the paper's network with
    its weights. The outputs are compared with the saved network in the loaded one's memory
    layout (channels_last, as the run trained): a convolution's float32 sums depend on the
    layout, and on some CPUs the two layouts differ in the last bits."""
    from siqa.build import load_model
    from siqa.models.bourbia2021 import MultiTaskSIQA

    torch.manual_seed(3)
    saved = MultiTaskSIQA()
    cfg = config.load_config(overrides=["device=cpu"])
    del cfg["model"]  # written before model.name existed
    model = load_model({"model": saved.state_dict(), "config": config.upgrade(cfg, saved.state_dict())},
                       torch.device("cpu"))
    assert type(model) is MultiTaskSIQA and not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))
    x = torch.rand(2, 1, 32, 32)
    like = saved.eval().to(memory_format=torch.channels_last)
    assert torch.equal(model(x, x)[0], like(x, x)[0])


def test_corners():
    from siqa.data.patches import corners

    assert len(corners(360, 32, 24, "exclusive")) * len(corners(640, 32, 24, "exclusive")) == 364
    assert len(corners(360, 32, 32, "inclusive")) * len(corners(640, 32, 32, "inclusive")) == 220
    assert len(corners(360, 32, 32, "exclusive")) * len(corners(640, 32, 32, "exclusive")) == 209
    # PAD-Net's six crops of a 640x360 view (main_live1.py crop_patch)
    assert corners(640, 256, 256, "cover") == [0, 192, 384]
    assert corners(360, 256, 256, "cover") == [0, 104]
    assert corners(256, 256, 256, "cover") == [0] and corners(200, 256, 256, "cover") == []


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_port_reproduces_the_originals_numbers(name):
    """Seeded weights and inputs, evaluation mode: outputs and gradients as the original's."""
    from scripts.golden_networks import run_port, seeded_inputs, seeded_model, summary

    g = GOLDEN[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = seeded_model(name, g["weight_seed"])
        left, right = seeded_inputs(g["input_seed"], g["batch"], g["size"])
        got = summary(*run_port(model, left, right, g["input_seed"])[:4])
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(torch.tensor(got["outputs"]), torch.tensor(g["outputs"]), rtol=1e-5, atol=1e-6)
    for key in ("grad_left_sum", "grad_left_abs", "grad_right_abs", "grad_params_abs"):
        assert got[key] == pytest.approx(g[key], rel=1e-4, abs=1e-7), key
    worst = g["max_abs_diff_vs_original"]
    assert max(worst["outputs"], worst["input grads"]) < 1e-6 and worst["param grads"] < 1e-5


def test_multiscore_dropout_only_in_training():
    """Two calls differ in train() mode (dropout's masks) and are equal in eval() mode."""
    torch.manual_seed(0)
    model = create_model("multiscore")
    x = torch.rand(4, 3, 32, 32)
    model.train()
    assert not all(torch.equal(a, b) for a, b in zip(model(x, x), model(x, x)))
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(model(x, x), model(x, x)))


def test_stereoqanet_standardisation_is_stored():
    torch.manual_seed(0)
    model = create_model("stereoqanet")
    mean, std = torch.full((3, 32, 32), 0.5), torch.full((3, 32, 32), 0.25)
    model.set_standardisation(mean, std, mean, torch.zeros(3, 32, 32))
    state = model.state_dict()
    assert torch.equal(state["left_std"], std) and torch.equal(state["right_std"], torch.ones(3, 32, 32))


def test_multiscore_loss_weighs_its_four_outputs():
    import torch.nn.functional as F

    from siqa.data.inputs import SplitData
    from siqa.training.step import joint_loss

    torch.manual_seed(0)
    model = create_model("multiscore").eval()
    g = torch.Generator().manual_seed(1)
    data = SplitData(left=torch.rand(8, 3, 32, 32, generator=g), right=torch.rand(8, 3, 32, 32, generator=g),
                     pair_index=torch.arange(8) // 4, score=torch.tensor([10.0, 40.0]),
                     nss=torch.zeros(2, 0), views=torch.tensor([[5.0, 20.0], [30.0, 50.0]]))
    idx = torch.arange(8)
    total, quality, nss = joint_loss(model, data, idx, nss_weight=25.0, spec=model.spec)
    q, l, r, s = model(data.left, data.right)
    pairs = data.pair_index
    expected = (2 * F.l1_loss(q, data.score[pairs]) + F.l1_loss(l, data.views[pairs, 0])
                + F.l1_loss(r, data.views[pairs, 1]) + F.l1_loss(s, data.score[pairs]))
    assert torch.allclose(total, expected) and float(nss) == 0.0
    assert torch.allclose(quality, F.l1_loss(q, data.score[pairs]))


def test_train_stereoqanet_on_the_tiny_database(tiny_manifest, tmp_path):
    """One experiment path: train.py with model.name=stereoqanet (RGB patches, the training
    split's standardisation stored in the checkpoint, no NSS targets computed)."""
    from conftest import run_entry, tiny_overrides
    from siqa.build import load_model
    from siqa.checkpoint import load_checkpoint

    proc = run_entry("train.py", *tiny_overrides(tiny_manifest, tmp_path, **{"model.name": "stereoqanet"}))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert not (tmp_path / "cache").exists()  # no NSS targets for a network without the task
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    assert state["config"]["model"]["name"] == "stereoqanet"
    assert state["config"]["train"]["nss_weight"] == 0.0  # auto, resolved and recorded
    assert "nss_head.weight" not in state["model"]
    model = load_model(state, torch.device("cpu"))
    assert type(model) is MODELS["stereoqanet"]
    assert not torch.equal(model.left_std, torch.ones(3, 32, 32))


def test_padnet_pretrain_writes_what_model_init_loads(tmp_path):
    import numpy as np
    from PIL import Image

    from siqa.build import load_init
    from siqa.models.padnet_pretrain import main

    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    out = tmp_path / "ae.pt"
    main(["--images", str(tmp_path / "imgs"), "--epochs", "1", "--crop", "32", "--out", str(out)])
    torch.manual_seed(0)
    model = create_model("padnet")
    load_init(model, {"model": {"name": "padnet", "init": str(out)}})
    saved = torch.load(out, weights_only=True)["autoencoder"]
    assert all(torch.equal(v, model.autoencoder.state_dict()[k]) for k, v in saved.items())
    with pytest.raises(UserError, match="no pre-trained part"):
        load_init(create_model("multiscore"), {"model": {"name": "multiscore", "init": str(out)}})


def test_protocol_card_names_the_network_without_moving_the_rng():
    from siqa.build import model_card

    state = torch.get_rng_state()
    card = model_card(config.load_config(overrides=["model.name=stereoqanet"]))
    assert torch.equal(state, torch.get_rng_state())
    assert card["name"] == "stereoqanet" and card["parameters"] == 8_821_313
    assert card["spec"]["normalisation"] == "standardise"
    assert model_card(config.upgrade({}))["name"] == "bourbia2021"


def test_padnet_on_the_small_demo_names_demo_size_full_before_building_it(tmp_path):
    """Refused before the demo is built (cwd without data/), naming the setting that fits."""
    from conftest import run_entry

    proc = run_entry("train.py", "model.name=padnet", f"out_dir={tmp_path / 'run'}",
                     f"tensorboard.dir={tmp_path / 'tb'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "128x96" in proc.stderr and "dataset.demo_size=full" in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


class ToyNetwork(torch.nn.Module):
    """A network added as a new one is: this class (its file) and one line in MODELS."""

    spec = InputSpec(outputs=("quality",), recipes={"paper": TOY_RECIPE, "short": TOY_RECIPE})

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, kernel_size=3, padding=1)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(4, 1)

    def forward(self, left, right):
        x = torch.relu(self.conv(torch.cat((left, right), dim=1))).mean(dim=(2, 3))
        return (self.fc(self.drop(x)).squeeze(-1),)


def test_a_new_network_is_its_file_and_one_line_in_the_dict(tiny_manifest, tmp_path, monkeypatch,
                                                            process_numerics):
    """Train, test and score a toy network that only MODELS knows: the data pipeline asks its
    spec for patches and targets, the config takes its recipe, the card counts it."""
    import siqa
    from conftest import tiny_overrides
    from siqa.settings import config_yaml
    from siqa.training import run as runner

    monkeypatch.setitem(MODELS, "toy", ToyNetwork)
    assert "toy" in list_models() and "toy 0.05" in config_yaml()  # its recipe, in the comments
    overrides = [o for o in tiny_overrides(tiny_manifest, tmp_path)
                 if not o.startswith(("train.epochs", "train.batch_size"))]
    cfg = config.load_config(overrides=[*overrides, "model.name=toy", "train.profile=paper"])
    assert cfg["train"]["lr"] == 0.05 and cfg["train"]["batch_size"] == 8  # its recipe
    lines = []
    runner.train(cfg, progress=False, log=lines.append)
    assert lines[0].startswith("profile paper on csv, model toy, device cpu, step eager, float32: "
                               "the paper's protocol")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["protocol"]["model"]["parameters"] == 2 * 4 * 9 + 4 + 4 + 1
    assert not (tmp_path / "cache").exists()  # no NSS task, no NSS targets computed
    model = siqa.load(tmp_path / "run" / "best.pt", device="cpu")
    assert type(model.network) is ToyNetwork and model.name == "toy"
    test_rows = [r for r in (tmp_path / "run" / "predictions.csv").read_text().splitlines()[1:]
                 if ",test," in r]
    assert test_rows  # the test split was scored, as evaluate.py and siqa.load score
