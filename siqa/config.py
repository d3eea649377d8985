"""The run configuration: the declared settings (siqa/settings.py) plus a config file and
dotted command-line overrides, validated, with every `auto` of a recipe resolved.

    defaults (siqa.settings) <- the checkout's config.yaml <- base (a run's or checkpoint's
    config) <- --config FILE <- key.sub=value overrides  --validate-->  --resolve `auto`-->  cfg

Every key is checked as it is set: an unknown key gets a did-you-mean, a wrong value one line
naming the key and what it takes. `auto` of a recipe key becomes the value of the network's
recipe in train.profile (siqa/models/<network>.py); `auto` of a device key
(train.deterministic, train.tf32) is decided where the device is known (siqa/device.py).
A config of an older version is made current in one place, `upgrade`, when a checkpoint is
read. What a resumed run may change (`resume_changes`) and which keys a run uses
(`check_effect`) are the settings' own declarations.
"""
import copy
import difflib
import math
import os
import sys
from pathlib import Path

import yaml

from siqa.errors import UserError
from siqa.runfolder import CONFIG
from siqa.settings import BY_KEY, FORMERLY, SETTINGS, Settings, choices_of, defaults

# The checkout's config.yaml: edited, it changes the defaults of every run of this checkout
# (an installed package has none and takes siqa/settings.py's).
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
DEFAULT_NETWORK = "bourbia2021"  # its recipe gives the keys another network's recipe leaves out


def load_config(path=None, overrides=(), base=None, resolve=True) -> dict:
    """The validated, resolved config: defaults <- the checkout's config.yaml <- `base` (e.g.
    a checkpoint's) <- the file `path` <- `overrides` (['key.sub=value', ...]).
    `resolve=False` leaves `auto` as it is (and the networks' recipes, with torch, unread)."""
    cfg = defaults()
    if DEFAULT_CONFIG.is_file():
        _merge(cfg, _read_yaml(DEFAULT_CONFIG))
    if base is not None:
        _merge(cfg, base)
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG:
        _merge(cfg, _read_yaml(path), source=path)
    for key, value in parse_overrides(overrides).items():
        _set(cfg, key, check(key, value))
    return resolve_auto(cfg) if resolve else cfg


def _merge(cfg, tree, source=None):
    for key, value in flatten(tree).items():
        key = current_key(key, source)
        try:
            _set(cfg, key, check(key, value))
        except UserError as err:
            if source is None:
                raise
            raise UserError(f"config file {source}: {err}") from None


_noted = set()  # (where, old name): each note once per process (a config is read several times)


def current_key(key, source=None):
    """The current name of setting `key` (an earlier name, siqa.settings' `formerly`, is read
    as the key it became); a one-line note on stderr where the user wrote the earlier name
    (`source`: the config file, or "the command line"; None for a recorded config, such as a
    checkpoint's, which is read silently)."""
    if key not in FORMERLY:
        return key
    if source is not None and (str(source), key) not in _noted:
        _noted.add((str(source), key))
        print(f"note: {key} is the earlier name of {FORMERLY[key]}, read as it ({source})",
              file=sys.stderr, flush=True)
    return FORMERLY[key]


def check(key, value):
    """`value` converted to the declared type of setting `key`, or a one-line UserError."""
    if key not in BY_KEY:
        close = difflib.get_close_matches(str(key), list(BY_KEY), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        shown = str(key)  # quoted where it would not show: empty, blank-edged, control characters
        shown = shown if shown and shown.isprintable() and shown.strip() == shown else repr(shown)
        raise UserError(f"unknown config key {shown}{hint}; valid keys: {', '.join(BY_KEY)}")
    setting = BY_KEY[key]

    def bad(expected):
        return UserError(f"config key {key}: expected {expected}, got {value!r}")

    if setting.auto and value == "auto":
        return value
    if setting.auto == "device":
        if not isinstance(value, bool):
            raise bad("auto, true or false")
        return value
    if setting.index_list:
        return _index_list(value, bad)
    choices = choices_of(setting)
    if choices and not any(value == c and type(value) is type(c) for c in choices):
        raise bad("one of " + ", ".join(str(c).lower() if isinstance(c, bool) else c for c in choices))
    kind = setting.value_type or type(setting.default)
    if kind is object:  # choices of several types (false | true | fused)
        return value
    if setting.default is None:
        if value is not None and not isinstance(value, str):
            raise bad("a string (path) or null")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        if setting.positive and value < 1:
            raise bad("a positive integer")
        if value < 0:
            raise bad("a non-negative integer")
        return value
    if kind is float:
        return _number(value, bad)
    if kind is list:
        if not isinstance(value, list) or len(value) != len(setting.default) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise bad(f"a list of {len(setting.default)} numbers")
        return [float(v) for v in value]
    if not isinstance(value, str):
        raise bad("a string")
    return value


def _index_list(value, bad):
    if value is None:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]  # train.splits=3 means [3]
    if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value) \
            or len(set(value)) != len(value):
        raise bad("null or a list of distinct split indices, e.g. [3, 7]")
    return list(value)


def _number(value, bad):
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise bad("a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad("a number")
    return float(value)


def parse_overrides(items) -> dict:
    """['a.b=1', ...] -> {'a.b': 1} (values parsed as YAML: 10, 0.5, null, [1, 2])."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key.sub=value")
        key, text = item.split("=", 1)
        key = current_key(key.strip(), "the command line")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[key] = text
    return out


def _read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys")
    return data


def _yaml_problem(err) -> str:
    """PyYAML's message (several lines, with a caret drawing) as one line: the problem and
    where it is."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def flatten(tree, prefix="") -> dict:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def get(cfg, dotted):
    for key in dotted.split("."):
        cfg = cfg[key]
    return cfg


def _set(tree, dotted, value):
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def dump(cfg) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def run_dir_of(cfg) -> Path:
    """Where a run writes: `out_dir`, or runs/<dataset.name> when it is null."""
    settings = Settings(cfg)
    return Path(settings.out_dir or Path("runs") / settings.dataset.name)


# --------------------------------------------------------------------------- recipes
def profile_of(cfg) -> str:
    """train.profile, with `auto` resolved: short on the demo database, paper elsewhere."""
    settings = Settings(cfg)
    profile = settings.train.profile
    if profile == "auto":
        return "short" if settings.dataset.name == "demo" else "paper"
    return profile


def recipe(network, profile) -> dict:
    """The `auto` values of `network` in `profile`: its own recipe, and the default network's
    value of a key its recipe leaves out (a key it does not use: recorded, not used)."""
    from siqa.models import MODELS

    return {**MODELS[DEFAULT_NETWORK].spec.recipes[profile], **MODELS[network].spec.recipes[profile]}


def resolve_auto(cfg) -> dict:
    """A copy of `cfg` with every recipe `auto` replaced by the value of the network's recipe
    in its profile; train.profile itself is recorded resolved."""
    profile = profile_of(cfg)
    out = copy.deepcopy(cfg)
    for key, value in recipe(Settings(out).model.name, profile).items():
        if get(out, key) == "auto":
            _set(out, key, value)
    out["train"]["profile"] = profile
    return out


def deviations_from_paper(cfg) -> list:
    """'key=value (paper: value)' for every setting of a resolved config that differs from
    its network's paper recipe and the paper's split; 'recipe:' for a network whose original
    recipe was not published."""
    from siqa.models import MODELS

    spec = MODELS[Settings(cfg).model.name].spec
    label = "paper" if spec.recipe_published else "recipe"
    paper = {**spec.recipes["paper"], "dataset.split": [0.6, 0.2, 0.2]}
    return [f"{key}={get(cfg, key)} ({label}: {value})" for key, value in paper.items()
            if get(cfg, key) != value]


def check_nss_weight(cfg):
    """UserError (one line) for a train.nss_weight > 0 that the network cannot use: one that
    predicts NSS uses it, one that takes the optional NSS head then carries it, any other is
    refused."""
    from siqa.models import MODELS

    settings = Settings(cfg)
    network, weight = settings.model.name, settings.train.nss_weight
    spec = MODELS[network].spec
    if weight > 0 and not spec.predicts_nss and not spec.nss_head:
        heads = [name for name, cls in MODELS.items() if cls.spec.nss_head]
        raise UserError(f"train.nss_weight={weight}: model.name={network} has no NSS output "
                        f"(an NSS head exists for {', '.join(heads)}); use train.nss_weight=0 "
                        "or auto")


# --------------------------------------------------------------------------- runs
def check_effect(cfg, overrides):
    """UserError for the first override (key=value, value not null) that the resolved `cfg`
    does not use, naming what would use it (the setting's `used_when`) and the settings of
    this run that decided it (those `used_when` read)."""
    for key, value in parse_overrides(overrides).items():
        setting = BY_KEY.get(key)
        if value is None or setting is None or setting.used_when is None:
            continue
        read = []
        if not setting.used_when(_Reads(cfg, read)):
            context = ", ".join(f"{k}={_text(get(cfg, k))}" for k in dict.fromkeys(read))
            raise UserError(f"{key}={_text(value)} has no effect in this run"
                            + (f" ({context})" if context else "")
                            + f": it is used with {setting.used_with}; remove it or set what uses it")


class _Reads(dict):
    """A config (nested dicts) that notes the dotted key of every value read from it."""

    def __init__(self, tree, read, prefix=""):
        super().__init__(tree)
        self._read, self._prefix = read, prefix

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if isinstance(value, dict):
            return _Reads(value, self._read, f"{self._prefix}{key}.")
        self._read.append(f"{self._prefix}{key}")
        return value

    def get(self, key, default=None):
        return self[key] if key in self else default


def _text(value) -> str:
    """A value as the command line writes it (null, true, false)."""
    if value is None or isinstance(value, bool):
        return yaml.safe_dump(value).splitlines()[0]
    return str(value)


def resume_changes(saved, cfg) -> dict:
    """{key: [recorded, now]} of the settings that `cfg` changes in a run whose recorded
    config is `saved`; UserError for any change of a setting that decides what the run
    computes (a setting without `resume`), and for fewer epochs (a longer run is allowed).
    A path is compared as the file or folder it names (`same_path`), not as text."""
    old, new = flatten(saved), flatten(cfg)
    changes = {k: [old[k], new[k]] for k in new
               if old.get(k) != new[k] and not (is_path(k) and same_path(old.get(k), new[k]))}
    free = [s.key for s in SETTINGS if s.resume]
    for key, (was, now) in changes.items():
        if key == "train.epochs" and now > was:
            continue
        if not BY_KEY[key].resume:
            more = " (train.epochs may only grow)" if key == "train.epochs" else ""
            raise UserError(f"--resume continues the run as recorded in its {CONFIG}: {key}="
                            f"{now} differs from the recorded {was}{more}; start a new run "
                            f"(another out_dir=...) to change it. Settings that may change "
                            f"on resume: {', '.join(free)}, a larger train.epochs")
    return changes


def is_path(key) -> bool:
    """Whether setting `key` holds a file or folder (siqa.settings' `path`)."""
    return key in BY_KEY and BY_KEY[key].path


def absolute_paths(cfg, origin=None) -> dict:
    """A copy of `cfg` with every relative path setting made absolute against `origin`
    (default: the working directory) and out_dir the run folder's absolute path
    (runs/<dataset.name> for null): what a run records, so that its folder, cache, curves
    and inputs are the same wherever it is resumed or read from. Absolute paths are kept as
    written (normalised), never through symbolic links."""
    base = Path(origin) if origin is not None else Path.cwd()
    out = copy.deepcopy(cfg)
    out["out_dir"] = str(run_dir_of(cfg))
    for setting in SETTINGS:
        value = get(out, setting.key)
        if setting.path and isinstance(value, str) and value:
            _set(out, setting.key, os.path.normpath(os.path.join(base, value)))
    return out


def made_in(run_folder, cfg):
    """The folder a run was made from (train.py's working directory then), for a config
    that records a relative out_dir (as runs did before they recorded absolute paths): the
    run folder less that out_dir, so X/runs/a with out_dir runs/a gives X wherever X now is.
    None where out_dir is absolute, or the run folder does not end in it (renamed since)."""
    out = run_dir_of(cfg)
    if out.is_absolute():
        return None
    folder, parts = Path(os.path.abspath(run_folder)), Path(os.path.normpath(out)).parts
    if parts == (".",):
        return folder
    if ".." in parts or folder.parts[-len(parts):] != parts:
        return None
    return Path(*folder.parts[:-len(parts)])


def same_path(a, b) -> bool:
    """Whether two path values name one file or folder: `runs/x`, `runs/x/` and its absolute
    spelling (from this working folder) do; two nulls do, a null and a path do not."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (yet): as spelled from here
        return Path(a).resolve() == Path(b).resolve()


def upgrade(cfg, model_state=None) -> dict:
    """A config as an older version wrote it into a checkpoint or run folder, made current:
    validated, each key it lacks at its default (a config without model.name is
    bourbia2021's), `auto` resolved; and where the network takes the optional NSS head but
    `model_state` has none, train.nss_weight 0 (the checkpoint was written before the head
    existed, when its recorded value was ignored)."""
    cfg = load_config(base=cfg)
    settings = Settings(cfg)
    if model_state is not None and settings.train.nss_weight > 0:
        from siqa.models import MODELS

        if MODELS[settings.model.name].spec.nss_head and "nss_head.weight" not in model_state:
            cfg["train"]["nss_weight"] = 0.0
    return cfg
