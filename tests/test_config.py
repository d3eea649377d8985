"""The config schema: defaults, dotted overrides, and the errors a user sees."""
import re

import pytest

from siqa.config import flatten, load_config, parse_overrides
from siqa.errors import UserError
from siqa.models import bourbia2021


def test_defaults_are_the_paper_protocol():
    cfg = load_config(overrides=["dataset.name=live3d_phase1"])
    assert cfg["train"]["epochs"] == 500 and cfg["train"]["optimizer"] == "sgd"
    assert cfg["train"]["batch_size"] == 128
    assert cfg["train"]["lr"] == 0.001 and cfg["train"]["momentum"] == 0.9
    assert cfg["train"]["weight_decay"] == 0.0001 and cfg["train"]["nss_weight"] == 25.0
    assert cfg["train"]["lr_step"] == 0  # constant LR, as the original ran
    assert cfg["dataset"]["split"] == [0.6, 0.2, 0.2]
    assert cfg["nss"]["marginal"] == "mle0" and cfg["nss"]["preprocess"] == "reference"


def test_auto_is_the_demo_profile_on_the_demo_and_explicit_values_win():
    demo = load_config()
    assert demo["dataset"]["name"] == "demo"
    for key, value in bourbia2021.SHORT.items():
        section, name = key.split(".")
        assert demo[section][name] == value
    mine = load_config(overrides=["train.epochs=3", "train.optimizer=sgd"])
    assert mine["train"]["epochs"] == 3 and mine["train"]["optimizer"] == "sgd"
    assert mine["train"]["lr"] == bourbia2021.SHORT["train.lr"]


def test_interface_keys_exist():
    keys = flatten(load_config())
    for key in ("dataset.name", "dataset.root", "dataset.manifest", "train.epochs",
                "train.seed", "train.repeats", "train.nss_weight", "out_dir"):
        assert key in keys


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_config(overrides=["train.epochs=3", "train.nss_weight=0", "out_dir=runs/x",
                                 "dataset.split=[0.5, 0.25, 0.25]", "dataset.root=null"])
    assert cfg["train"]["epochs"] == 3
    assert cfg["train"]["nss_weight"] == 0.0 and isinstance(cfg["train"]["nss_weight"], float)
    assert cfg["out_dir"] == "runs/x" and cfg["dataset"]["root"] is None
    assert cfg["dataset"]["split"] == [0.5, 0.25, 0.25]


def test_exponent_notation_is_a_number():
    """YAML 1.1 (PyYAML) reads 1e-4 (no dot) as the string '1e-4': train.lr=1e-4 was refused
    as "expected a number"; it is the number 0.0001 (and 1.0e-4 stays one)."""
    for text, value in (("1e-4", 1e-4), ("1.0e-4", 1e-4), ("5E-3", 5e-3), ("2", 2.0)):
        cfg = load_config(overrides=[f"train.lr={text}", f"train.weight_decay={text}"])
        assert cfg["train"]["lr"] == value and isinstance(cfg["train"]["lr"], float)
        assert cfg["train"]["weight_decay"] == value
    for bad in ("nan", "inf", "1e-4x"):
        with pytest.raises(UserError, match="train.lr: expected a number"):
            load_config(overrides=[f"train.lr={bad}"])


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        load_config(overrides=["train.epoch=3"])
    message = str(err.value)
    assert "train.epoch" in message and "train.epochs" in message and "dataset.name" in message


@pytest.mark.parametrize("item, needle", [
    ("train.epochs=ten", "train.epochs"),
    ("train.epochs=0", "train.epochs"),
    ("train.lr=-", "train.lr"),
    ("train.optimizer=rmsprop", "train.optimizer"),
    ("train.lr=fast", "train.lr"),
    ("train.batch_size=1.5", "train.batch_size"),
    ("train.amp=maybe", "train.amp"),
    ("dataset.name=live4d", "dataset.name"),
    ("nss.marginal=free", "nss.marginal"),
    ("dataset.split=[0.5, 0.5]", "dataset.split"),
    ("train.repeats=0", "train.repeats"),
])
def test_wrong_type_names_the_key(item, needle):
    with pytest.raises(UserError) as err:
        load_config(overrides=[item])
    assert needle in str(err.value)


def test_config_file_overrides_and_its_errors(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("train:\n  epochs: 7\n")
    assert load_config(good)["train"]["epochs"] == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 7\n")
    with pytest.raises(UserError, match="train.epochz"):
        load_config(bad)
    with pytest.raises(UserError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("content, problem", [
    (b"train: [1,\n", "line 2, column 1"),  # PyYAML: "expected ',' or ']'", the line it gave up on
    (b"'", "line 1, column 2"),
    (b"\xff\xfe", "not UTF-8 text"),
])
def test_a_config_file_that_is_not_yaml_is_one_line_naming_the_file_and_where(tmp_path, content,
                                                                               problem):
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and problem in message, message


def test_override_without_equals_is_an_error():
    with pytest.raises(UserError, match="key.sub=value"):
        parse_overrides(["train.epochs"])


# The paper rows of the networks' recipes (siqa/models/<network>.py), written out from their sources (docs/models.md):
# epochs, optimizer, lr, batch, weight decay, lr_step, lr_gamma, nss_weight.
PAPER_RECIPES = {
    "bourbia2021": (500, "sgd", 0.001, 128, 0.0001, 0, 0.1, 25.0),
    "multiscore": (100, "sgd", 0.0001, 128, 0.001, 0, 0.1, 0.0),  # its train.py
    "stereoqanet": (500, "sgd", 0.001, 128, 0.0001, 0, 0.1, 0.0),  # none released: ours
    "padnet": (300, "adam", 0.0001, 16, 0.0, 50, 0.25, 0.0),  # main_live1.py
}
# The demo benchmark's budget rows (docs/benchmark.md); padnet's is not measured (the paper row, 10 epochs)
SHORT_RECIPES = {
    "bourbia2021": (40, "sgd", 0.001, 128, 0.0001, 0, 0.1, 25.0),
    "multiscore": (15, "adam", 0.001, 128, 0.0001, 0, 0.1, 0.0),
    "stereoqanet": (15, "adam", 0.001, 128, 0.0001, 0, 0.1, 0.0),
    "padnet": (10, "adam", 0.0001, 16, 0.0, 50, 0.25, 0.0),
}
KEYS = ("epochs", "optimizer", "lr", "batch_size", "weight_decay", "lr_step", "lr_gamma",
        "nss_weight")


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_auto_resolves_per_network_and_profile(name):
    paper = load_config(overrides=[f"model.name={name}", "dataset.name=live3d_phase2"])
    assert tuple(paper["train"][k] for k in KEYS) == PAPER_RECIPES[name]
    assert paper["train"]["profile"] == "paper"
    short = load_config(overrides=[f"model.name={name}"])  # the demo
    assert short["train"]["profile"] == "short"
    assert {k: short["train"][k] for k in KEYS} == dict(zip(KEYS, SHORT_RECIPES[name]))
    assert paper["patches"]["normalisation"] == "reference"
    assert short["patches"]["normalisation"] == "contrast"


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_explicit_values_win_over_every_recipe(name):
    explicit = ["train.epochs=3", "train.optimizer=adam", "train.lr=0.5", "train.batch_size=7",
                "train.weight_decay=0", "train.lr_step=2", "train.lr_gamma=0.5",
                "train.nss_weight=0", "patches.normalisation=reference"]
    for profile in ("paper", "short"):
        cfg = load_config(overrides=[f"model.name={name}", f"train.profile={profile}",
                                                  *explicit])
        assert tuple(cfg["train"][k] for k in KEYS) == (3, "adam", 0.5, 7, 0.0, 2, 0.5, 0.0)
        assert cfg["patches"]["normalisation"] == "reference"


def test_deviations_are_against_the_networks_own_recipe():
    from siqa.config import deviations_from_paper

    def deviations(*overrides):
        return deviations_from_paper(load_config(overrides=list(overrides)))

    assert deviations("dataset.name=live3d_phase1") == []
    assert deviations("model.name=multiscore", "dataset.name=live3d_phase1") == []
    assert deviations("model.name=padnet", "dataset.name=live3d_phase1") == []
    assert deviations("model.name=multiscore") == [  # the demo benchmark's budget
        "train.epochs=15 (paper: 100)", "train.optimizer=adam (paper: sgd)",
        "train.lr=0.001 (paper: 0.0001)", "train.weight_decay=0.0001 (paper: 0.001)"]
    assert deviations("model.name=padnet", "dataset.name=live3d_phase1", "train.lr=0.001",
                      "train.batch_size=128") == ["train.lr=0.001 (paper: 0.0001)",
                                                  "train.batch_size=128 (paper: 16)"]
    # stereoqanet has no published recipe: its row is this project's, and says so
    assert deviations("model.name=stereoqanet", "dataset.name=live3d_phase1",
                      "train.nss_weight=10") == ["train.nss_weight=10.0 (recipe: 0.0)"]
    # bourbia2021 as before: the demo profile departs in the epochs and the normalisation
    assert deviations() == ["train.epochs=40 (paper: 500)",
                            "patches.normalisation=contrast (paper: reference)"]


def test_auto_keys_keep_their_types():
    with pytest.raises(UserError, match="train.batch_size"):
        load_config(overrides=["train.batch_size=auto16"])
    with pytest.raises(UserError, match="train.nss_weight"):
        load_config(overrides=["train.nss_weight=heavy"])
    cfg = load_config(overrides=["train.weight_decay=0", "train.lr_gamma=1"])
    assert cfg["train"]["weight_decay"] == 0.0 and isinstance(cfg["train"]["lr_gamma"], float)


def test_config_yaml_is_written_from_the_declared_settings():
    """config.yaml is siqa/settings.py's table, rendered (`python -m siqa.settings`): each key
    declared once, its comment and default from there."""
    from pathlib import Path

    from siqa.settings import SETTINGS, config_yaml, defaults

    text = (Path(__file__).resolve().parent.parent / "config.yaml").read_text()
    assert text == config_yaml()
    assert load_config() == load_config(base=defaults())  # the file adds nothing to the table
    keys = [s.key for s in SETTINGS]
    assert len(keys) == len(set(keys)) and set(flatten(load_config())) == set(keys)


def test_every_declaration_is_enforced():
    """Each kind of declaration of siqa.settings refuses what it should, in one line."""
    from siqa.config import check

    cases = [("train.repeats", 0, "a positive integer"), ("train.seed", -1, "a non-negative integer"),
             ("train.splits", [1, 1], "null or a list of distinct split indices"),
             ("train.tf32", "yes", "auto, true or false"),
             ("dataset.split", [0.5, 0.5], "a list of 3 numbers"), ("out_dir", 3, "a string (path) or null"),
             ("protocol.design", "loo", "one of random, kfold"), ("train.amp", 1, "true or false"),
             ("model.name", "resnet", "one of bourbia2021, multiscore, padnet, stereoqanet, tiny,")]
    for key, value, expected in cases:
        with pytest.raises(UserError, match=re.escape(f"config key {key}: expected {expected}")) as err:
            check(key, value)
        assert "\n" not in str(err.value)
    assert check("train.splits", 3) == [3] and check("train.epochs", "auto") == "auto"


def test_an_earlier_name_is_read_as_its_setting_with_one_note(tmp_path, capsys):
    """train.concurrent_repeats (the splits at once; a k-fold run has K splits) is now
    train.concurrent_splits: written by the user it is read with one note on stderr, from a
    recorded config (a checkpoint's, an old run folder's) silently; and the refusal of a key
    without effect names what uses it in the new words."""
    from siqa.config import _noted, check_effect
    from siqa.settings import FORMERLY

    assert FORMERLY == {"train.concurrent_repeats": "train.concurrent_splits"}
    _noted.clear()
    overrides = ["train.repeats=2", "train.concurrent_repeats=fused"]
    cfg = load_config(overrides=overrides)
    assert cfg["train"]["concurrent_splits"] == "fused" and "concurrent_repeats" not in cfg["train"]
    check_effect(cfg, overrides)
    load_config(overrides=overrides)  # read again (train.py reads its config twice): no second note
    assert capsys.readouterr().err.splitlines() == [
        "note: train.concurrent_repeats is the earlier name of train.concurrent_splits, read as "
        "it (the command line)"]
    old = tmp_path / "config.yaml"
    old.write_text("train:\n  repeats: 2\n  concurrent_repeats: true\n")
    assert load_config(old)["train"]["concurrent_splits"] is True
    assert f"({old})" in capsys.readouterr().err
    recorded = load_config(base={"train": {"repeats": 2, "concurrent_repeats": True}})
    assert recorded["train"]["concurrent_splits"] is True and capsys.readouterr().err == ""
    with pytest.raises(UserError, match=r"train.concurrent_splits=true has no effect in this run "
                                        r"\(train.repeats=1.*used with a run of several splits"):
        check_effect(load_config(overrides=["train.concurrent_repeats=true"]),
                     ["train.concurrent_repeats=true"])
    kfold = ["protocol.design=kfold", "train.concurrent_splits=fused"]  # 5 folds: 5 splits
    check_effect(load_config(overrides=kfold), kfold)


def test_train_lists_every_setting_with_its_default_values_and_meaning(capsys):
    """train.py --list-settings: from siqa.settings' one declaration, each key's default,
    its meaning, the values it takes, what uses it and what --resume may change."""
    import train
    from siqa.settings import SETTINGS, _yaml

    assert train.main(["--list-settings"]) == 0
    text = capsys.readouterr().out
    heads = [line for line in text.splitlines() if not line.startswith("    ")]
    assert heads == [f"{s.key} = {_yaml(s.default)}" for s in SETTINGS]
    block = text.split("train.concurrent_splits = false\n", 1)[1].split("\ntrain.amp = ", 1)[0]
    flat = " ".join(block.split())
    assert flat.startswith("the run's splits at once in one process: false (one after another)")
    assert "values: false | true | fused; used with a run of several splits" in flat
    assert "--resume may change it: the splits one after another" in flat
    assert "earlier name: train.concurrent_repeats" in flat
    epochs = " ".join(text.split("train.epochs = auto\n", 1)[1].split("\ntrain.")[0].split())
    assert "auto: the network's recipe (paper: bourbia2021 500" in epochs
    assert "values: a positive integer | auto;" in epochs


def test_the_patch_constants_cover_exactly_the_declared_normalisations():
    """PATCH_C holds a number for each name patches.normalisation takes (the scoring API and
    export read it): a normalisation declared without its C, or a C without its declaration,
    fails here, not in a user's run."""
    from siqa.data.inputs import PATCH_C
    from siqa.settings import setting_choices

    assert tuple(PATCH_C) == setting_choices("patches.normalisation")


def test_settings_reads_every_key_by_its_name_and_an_earlier_name_as_the_key_it_became():
    """siqa.settings.Settings: Settings(cfg).section.name is the dict's value for every
    declared key; train.concurrent_repeats (the earlier name) reads train.concurrent_splits;
    a name that is not a setting is an AttributeError naming it; the view is read-only, and
    copies and pickles of it read the same."""
    from siqa.settings import Settings

    cfg = load_config(overrides=["model.name=padnet", "train.concurrent_splits=fused", "train.repeats=2"])
    settings = Settings(cfg)
    for key, value in flatten(cfg).items():
        node = settings
        for part in key.split("."):
            node = getattr(node, part)
        assert node is value or node == value, key
    assert settings.train.concurrent_repeats == "fused"
    with pytest.raises(AttributeError, match=r"no setting train\.epochz"):
        _ = settings.train.epochz
    with pytest.raises(AttributeError, match=r"no setting modle"):
        _ = settings.modle
    with pytest.raises(AttributeError, match="read-only"):
        settings.train.epochs = 3
    assert settings.train.epochs == cfg["train"]["epochs"]
    import copy
    import pickle

    assert pickle.loads(pickle.dumps(settings.train)).lr == copy.deepcopy(settings).train.lr == cfg["train"]["lr"]


def test_a_renamed_key_is_its_declaration_alone(monkeypatch):
    """Were train.nss_weight renamed loss.nss_weight (declared with formerly=("train.nss_weight",)),
    code that reads Settings(cfg).train.nss_weight would read the new key: the declaration is
    the one edit (the table is patched here as the rename would change it)."""
    import siqa.settings as declared

    setting = declared.BY_KEY["train.nss_weight"]
    renamed = {**{k: v for k, v in declared.BY_KEY.items() if k != setting.key}, "loss.nss_weight": setting}
    monkeypatch.setattr(declared, "BY_KEY", renamed)
    monkeypatch.setattr(declared, "FORMERLY", {**declared.FORMERLY, "train.nss_weight": "loss.nss_weight"})
    cfg = {"loss": {"nss_weight": 7.0}, "train": {"lr": 0.1}}
    assert declared.Settings(cfg).train.nss_weight == 7.0 and declared.Settings(cfg).loss.nss_weight == 7.0
    assert declared.Settings(cfg).train.lr == 0.1
