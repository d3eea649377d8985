"""The run configuration: `config.yaml` plus dotted command-line overrides.

The schema is the repository's own `config.yaml`: its keys are the only valid keys and the
type of each default is the type a value must have (an int where an int is, a number where
a float is, a list of the same length where a list is). Keys whose default is null take a
string or null; the few keys below with named choices or `auto` are checked against them.
"""
import copy
import math
from pathlib import Path

import yaml

from siqa.errors import UserError

# siqa/config.yaml links to the repository's config.yaml; an installed package carries a copy.
DEFAULT_CONFIG = (Path(__file__).resolve().parent / "config.yaml").resolve()

CHOICES = {
    "device": None,  # free string, checked when the device is opened
    "dataset.name": ["demo", "live3d_phase1", "live3d_phase2", "waterloo3d_phase1",
                     "waterloo3d_phase2", "csv"],
    "nss.marginal": ["mle0", "scipy_free_loc"],
    "nss.preprocess": ["reference", "global"],
    "train.patch_dtype": ["float32", "float16"],
    "train.optimizer": ["sgd", "adam"],
    "patches.normalisation": ["reference", "contrast"],
    "dataset.demo_size": ["small", "full"],
    "train.step": ["eager", "compile", "graph"],
    "protocol.design": ["random", "kfold"],
    "train.profile": ["auto", "paper", "short"],
}
POSITIVE = {"train.epochs", "train.batch_size", "train.val_every", "train.repeats",
            "train.checkpoint_every", "train.scatter_every", "protocol.folds"}
AUTO_OR_BOOL = {"train.deterministic", "train.tf32"}  # auto (decided per device), true or false
INDEX_LISTS = {"train.splits"}  # null, or a non-empty list of distinct non-negative integers

# The values of the keys that may be `auto`, by network (model.name) and train.profile:
# `paper`, the recipe of the network's original (the default on the real databases);
# `short`, a run that learns within minutes on a 2-core CPU, where the paper's epochs are out
# of reach (the default on the demo database; a documented decision, see README). An explicit
# value always wins. Each row is one recipe on one line (docs/models.md gives the sources).
RECIPES = {
    "bourbia2021": {  # the paper and its code (docs/method.md#training)
        "paper": {"train.epochs": 500, "train.optimizer": "sgd", "train.lr": 0.001, "train.lr_step": 0,
                  "train.lr_gamma": 0.1, "train.weight_decay": 0.0001, "train.batch_size": 128,
                  "train.nss_weight": 25.0, "patches.normalisation": "reference"},
    },
    "multiscore": {  # the authors' train.py: SGD 1e-4, momentum 0.9, weight decay 1e-3, batch 128, 100 epochs
        "paper": {"train.epochs": 100, "train.optimizer": "sgd", "train.lr": 0.0001, "train.lr_step": 0,
                  "train.lr_gamma": 0.1, "train.weight_decay": 0.001, "train.batch_size": 128,
                  "train.nss_weight": 0.0},
    },
    "stereoqanet": {  # no training script was released and no recipe is known here: this
        # project's values (bourbia2021's paper recipe), not StereoQA-Net's (docs/models.md)
        "paper": {"train.epochs": 500, "train.optimizer": "sgd", "train.lr": 0.001, "train.lr_step": 0,
                  "train.lr_gamma": 0.1, "train.weight_decay": 0.0001, "train.batch_size": 128,
                  "train.nss_weight": 0.0},
    },
    "padnet": {  # main_live1.py: Adam 1e-4 (its per-group rates: PADNet.param_groups), batch 16,
        # 300 epochs, x0.25 at epochs 50/100/150/200 (here every 50 epochs: also at 250)
        "paper": {"train.epochs": 300, "train.optimizer": "adam", "train.lr": 0.0001, "train.lr_step": 50,
                  "train.lr_gamma": 0.25, "train.weight_decay": 0.0, "train.batch_size": 16,
                  "train.nss_weight": 0.0},
    },
}
# The `short` row of each network: its `paper` row with these values changed.
SHORT_CHANGES = {
    # The paper's optimizer and constant rate; only the normalisation and the epoch count
    # differ (docs/decisions.md#the-demo-profile, measured by benchmarks/demo_profiles.py).
    "bourbia2021": {"train.epochs": 40, "patches.normalisation": "contrast"},
    # The demo benchmark's budget (docs/benchmark.md): 100 epochs of SGD 1e-4 barely move in
    # the ~30 CPU minutes a network gets; Adam 1e-3 for 15 epochs (~5 min a fold on 2 cores)
    # learns, and the project's weight decay. The same row as stereoqanet's.
    "multiscore": {"train.epochs": 15, "train.optimizer": "adam", "train.lr": 0.001,
                   "train.weight_decay": 0.0001},
    # The demo benchmark's budget (docs/benchmark.md): SGD 1e-3 and Adam 1e-4 left the test
    # SROCC near 0 after 5-6 epochs of a fold; Adam 1e-3 for 15 epochs learns (~6 min a fold).
    "stereoqanet": {"train.epochs": 15, "train.optimizer": "adam"},
    # Not measured: PAD-Net was not trained on the demo (its 256x256 crops need the full-size
    # demo and a GPU, docs/benchmark.md); the paper recipe cut to 10 epochs
    "padnet": {"train.epochs": 10},
}
for _network, _changes in SHORT_CHANGES.items():
    RECIPES[_network]["short"] = {**RECIPES[_network]["paper"], **_changes}
AUTO = RECIPES["bourbia2021"]  # the default network's values by profile (as before networks had their own)
AUTO_KEYS = AUTO["paper"]  # the keys that may be `auto`, and the type each value has
# patches.normalisation concerns the local patches of bourbia2021 only; another network's run
# records bourbia2021's value of its profile (unused) and no deviation for it.
LOCAL_ONLY = ("patches.normalisation",)
NO_PUBLISHED_RECIPE = ("stereoqanet",)  # its "paper" row is this project's recipe


def recipe(network, profile) -> dict:
    """The `auto` values of `network` in `profile` (RECIPES; LOCAL_ONLY keys from bourbia2021's)."""
    return {**{k: AUTO[profile][k] for k in LOCAL_ONLY}, **RECIPES[network][profile]}


# Keys that only some runs use. A key given on the command line to a run that does not use
# it is a UserError naming what would use it (issue 22: `dataset.manifest=pairs.csv` without
# `dataset.name=csv` trained on the demo without a word). key: (does this resolved config
# use it?, what would use it).
USED_WHEN = {
    "dataset.manifest": (lambda c: c["dataset"]["name"] in ("csv", "waterloo3d_phase1",
                                                            "waterloo3d_phase2"),
                         "dataset.name=csv (or a Waterloo database)"),
    "dataset.root": (lambda c: not (c["dataset"]["name"] == "csv" and c["dataset"]["manifest"]),
                     "a database without a manifest (dataset.name=csv reads the manifest's "
                     "own folder)"),
    "dataset.demo_size": (lambda c: c["dataset"]["name"] == "demo", "dataset.name=demo"),
    "dataset.split": (lambda c: not c["dataset"]["split_file"],
                      "a run without dataset.split_file (the file's splits replace the ratios)"),
    "train.momentum": (lambda c: c["train"]["optimizer"] == "sgd", "train.optimizer=sgd"),
    "train.lr_gamma": (lambda c: c["train"]["lr_step"] > 0, "train.lr_step > 0"),
    "train.concurrent_repeats": (lambda c: c["train"]["repeats"] > 1, "train.repeats > 1"),
}


def check_effect(cfg, overrides):
    """UserError for the first override (key=value, value not null) that `cfg` does not
    use, naming what would use it (`USED_WHEN`); `auto` values are resolved first."""
    resolved = resolve_auto(cfg)
    for key, value in parse_overrides(overrides).items():
        if value is None or key not in USED_WHEN:
            continue
        used, user = USED_WHEN[key]
        if not used(resolved):
            raise UserError(f"{key}={value} has no effect in this run (dataset.name="
                            f"{resolved['dataset']['name']}, train.optimizer="
                            f"{resolved['train']['optimizer']}): it is used with {user}; "
                            "remove it or set what uses it")


# Settings `train.py --resume` may change: they decide where and how fast the run computes,
# not what it computes (docs/usage.md#resuming-and-several-processes). Any other difference
# from the run's recorded config.yaml is a UserError: the resumed run and its protocol card
# would claim one setting for epochs trained with another. train.epochs may grow (a longer run, recorded in the card).
RESUME_FREE = {
    "device": "where it computes (the arithmetic may differ as between machines)",
    "train.threads": "CPU threads (the card records them)",
    "train.step": "eager, compile or graph: the same step, compiled or captured",
    "train.concurrent_repeats": "the splits one after another or at once: the same runs",
    "train.checkpoint_every": "how often last.pt is written",
    "nss.workers": "processes for the NSS precompute: the same targets",
    "nss.cache_dir": "where the content-addressed NSS targets are cached",
    "tensorboard.dir": "where the curves are written",
    "train.splits": "which of the run's splits this process trains (an array task's share)",
}


def resume_changes(saved, cfg) -> dict:
    """{key: [recorded, now]} of the settings that `cfg` changes in a run whose recorded
    config is `saved`; UserError for any change outside `RESUME_FREE` (and for fewer epochs)."""
    old, new = flatten(resolve_auto(saved)), flatten(resolve_auto(cfg))
    changes = {k: [old[k], new[k]] for k in new if old.get(k) != new[k]}
    for key, (was, now) in changes.items():
        if key == "train.epochs" and now > was:
            continue
        if key not in RESUME_FREE:
            more = (" (train.epochs may only grow)" if key == "train.epochs" else "")
            raise UserError(f"--resume continues the run as recorded in its config.yaml: {key}="
                            f"{now} differs from the recorded {was}{more}; start a new run "
                            f"(another out_dir=...) to change it. Settings that may change "
                            f"on resume: {', '.join(RESUME_FREE)}, a larger train.epochs")
    return changes


def flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _set(tree, dotted, value):
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    tree[leaf] = value


def get(cfg, dotted):
    for key in dotted.split("."):
        cfg = cfg[key]
    return cfg


def _read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys")
    return data


def _check(key, value, default):
    """Return `value` converted to the schema's type for `key`, or raise UserError."""
    def bad(expected):
        return UserError(f"config key {key}: expected {expected}, got {value!r}")

    if key == "model.name":  # the names of siqa.models.MODELS
        from siqa.models import check_name

        return check_name(value)
    if key in AUTO_OR_BOOL:
        if value != "auto" and not isinstance(value, bool):
            raise bad("auto, true or false")
        return value
    if key in INDEX_LISTS:
        if value is None:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]  # train.splits=3 means [3]
        if not isinstance(value, list) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value) \
                or len(set(value)) != len(value):
            raise bad("null or a list of distinct split indices, e.g. [3, 7]")
        return list(value)
    if key in AUTO_KEYS:
        if value == "auto":
            return value
        default = AUTO_KEYS[key]
    if key in CHOICES and CHOICES[key] is not None and value not in CHOICES[key]:
        raise bad("one of " + ", ".join(CHOICES[key]))
    if default is None:
        if value is not None and not isinstance(value, str):
            raise bad("a string (path) or null")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        if key in POSITIVE and value < 1:
            raise bad("a positive integer")
        if value < 0:
            raise bad("a non-negative integer")
        return value
    if isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise bad("a number")
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list) or len(value) != len(default) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise bad(f"a list of {len(default)} numbers")
        return [float(v) for v in value]
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise AssertionError(f"unhandled schema type for {key}")


def parse_overrides(items):
    """['a.b=1', ...] -> {'a.b': 1} (values parsed as YAML: 10, 0.5, null, [1, 2])."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key.sub=value")
        key, text = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def validate(cfg, schema):
    """Check a whole config tree against the schema; returns a validated deep copy."""
    flat_schema = flatten(schema)
    flat = flatten(cfg)
    unknown = sorted(set(flat) - set(flat_schema))
    if unknown:
        raise _unknown_key(unknown[0], flat_schema)
    out = copy.deepcopy(schema)
    for key, value in flat.items():
        _set(out, key, _check(key, value, flat_schema[key]))
    return out


def load_config(path=None, overrides=(), base=None):
    """The validated config: schema defaults <- `base` (e.g. a checkpoint's) <- file <- overrides."""
    schema = _read_yaml(DEFAULT_CONFIG)
    cfg = validate(base, schema) if base is not None else copy.deepcopy(schema)
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG:
        for key, value in flatten(_read_yaml(path)).items():
            _set_checked(cfg, schema, key, value)
    for key, value in parse_overrides(overrides).items():
        _set_checked(cfg, schema, key, value)
    return cfg


def _set_checked(cfg, schema, key, value):
    flat_schema = flatten(schema)
    if key not in flat_schema:
        raise _unknown_key(key, flat_schema)
    _set(cfg, key, _check(key, value, flat_schema[key]))


def _unknown_key(key, flat_schema):
    import difflib

    close = difflib.get_close_matches(str(key), list(flat_schema), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UserError(f"unknown config key {key}{hint}; valid keys: {', '.join(flat_schema)}")


def run_dir_of(cfg) -> Path:
    """Where a run writes: `out_dir`, or runs/<dataset.name> when it is null."""
    return Path(cfg["out_dir"] or Path("runs") / cfg["dataset"]["name"])


def profile_of(cfg) -> str:
    """train.profile, with `auto` resolved: short on the demo database, paper elsewhere."""
    profile = cfg["train"].get("profile", "auto")
    if profile == "auto":
        return "short" if cfg["dataset"]["name"] == "demo" else "paper"
    return profile


def network_of(cfg) -> str:
    """model.name of a config (bourbia2021 for a config written before the key existed)."""
    return (cfg.get("model") or {}).get("name") or "bourbia2021"


def resolve_auto(cfg) -> dict:
    """A copy of `cfg` with every `auto` replaced by its value for the run's network and
    profile (`recipe(model.name, profile_of(cfg))`); train.profile itself is recorded resolved."""
    profile = profile_of(cfg)
    out = copy.deepcopy(cfg)
    for key, value in recipe(network_of(cfg), profile).items():
        if get(out, key) == "auto":
            _set(out, key, value)
    out["train"]["profile"] = profile
    return out


def deviations_from_paper(cfg) -> list:
    """'key=value (paper: value)' for every setting of a resolved config that differs from
    its network's paper recipe (RECIPES[model.name]['paper']) and the split; 'recipe:' for
    a network whose original recipe was not published (NO_PUBLISHED_RECIPE)."""
    network = network_of(cfg)
    label = "recipe" if network in NO_PUBLISHED_RECIPE else "paper"
    own = dict(RECIPES[network]["paper"])
    if network == "bourbia2021":
        own.update({k: AUTO["paper"][k] for k in LOCAL_ONLY})
    paper = {**own, "dataset.split": [0.6, 0.2, 0.2]}
    return [f"{key}={get(cfg, key)} ({label}: {value})" for key, value in paper.items()
            if get(cfg, key) != value]


def check_nss_weight(cfg):
    """UserError (one line) for a resolved train.nss_weight > 0 that the network cannot use:
    bourbia2021 predicts NSS, the networks of siqa.models.NSS_HEAD then carry an NSS head;
    a network in neither is refused."""
    from siqa.models import NSS_HEAD

    network, weight = network_of(cfg), cfg["train"]["nss_weight"]
    if weight != "auto" and weight > 0 and network != "bourbia2021" and network not in NSS_HEAD:
        raise UserError(f"train.nss_weight={weight}: model.name={network} has no NSS output "
                        f"(an NSS head exists for {', '.join(NSS_HEAD)}); use train.nss_weight=0 "
                        "or auto")


def dump(cfg) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
