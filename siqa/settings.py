"""Every configuration key, declared once: its default, what it does, the values it takes,
whether it may be `auto`, whether --resume may change it, and which runs use it.

    SETTINGS (this table)  --siqa.config-->  validation of config files and key=value overrides,
                                             `auto` resolved, --resume refusals, no-effect refusals
                           --config_yaml()-->  config.yaml, the reference a user reads and edits
                                             (tests/test_config.py keeps the file equal to it)

A value's type is its default's (an int where an int is, a number where a float is, a list of
the same length where a list is, a string or null where null is) unless `value_type` says it.
`auto` comes in two kinds: "recipe" (the value of the network's recipe in train.profile:
siqa/models/<network>.py, InputSpec.recipes) and "device" (decided for the device the run
computes on). A new key is one Setting here; `python -m siqa.settings > config.yaml` writes
the file.
"""
import sys
from collections.abc import Callable
from dataclasses import dataclass

from siqa.runfolder import BEST, LAST, METRICS, SPLITS


@dataclass(frozen=True)
class Setting:
    key: str  # dotted: section.name
    default: object
    doc: str  # one line: what it does (config.yaml's comment)
    choices: object = ()  # the named values it takes (besides `auto`), or a function giving them
    value_type: type | None = None  # where the default does not say it (an `auto` default)
    auto: str = ""  # "recipe" or "device" where `auto` is a value
    positive: bool = False  # an integer >= 1
    index_list: bool = False  # null, or a non-empty list of distinct non-negative integers
    resume: str = ""  # why --resume may change it ("" = it may not)
    used_when: Callable | None = None  # (resolved config) -> whether the run uses it
    used_with: str = ""  # what would use it, for the refusal of a key without effect
    path: bool = False  # a file or folder: a run records it absolute (siqa.config.absolute_paths)
    formerly: tuple = ()  # its earlier names, still read (with a one-line note where a user wrote one)


def _dataset(c):
    return Settings(c).dataset.name


def split_count(c) -> int | None:
    """How many splits a (resolved) config trains: train.repeats, times protocol.folds for the
    k-fold design; with dataset.split_file, its first train.repeats splits (k-fold files:
    whole repetitions of their folds). None where a split file cannot be read here (the run
    refuses it in its own words)."""
    settings = Settings(c)
    repeats, path = settings.train.repeats, settings.dataset.split_file
    if path:
        import json

        try:
            with open(path, encoding="utf-8") as f:
                return repeats * int(json.load(f).get("folds") or 1)
        except (OSError, ValueError, TypeError, AttributeError):
            return None
    protocol = settings.protocol
    return repeats * (protocol.folds if protocol.design == "kfold" else 1)


def _models():
    import siqa.models  # torch: imported once a value needs it

    return siqa.models


def _databases():
    import siqa.data.databases  # the loaders: imported once a value needs it

    return siqa.data.databases


SETTINGS = (
    Setting("out_dir", None, "where a run writes; null = runs/<dataset.name> (a run records "
            "its paths absolute)",
            resume="the folder named is the run resumed (a copied run folder resumes where it "
                   "lies; another spelling of the same folder is no change)", path=True),
    Setting("device", "auto", "auto (CUDA when available) | cpu | cuda | cuda:N",
            resume="where it computes (the arithmetic may differ as between machines)"),
    Setting("progress_every", 10.0, "seconds between two progress lines where stderr is not a "
            "terminal (a cluster's log), while the data is prepared and in each split's first "
            "epoch; 0 = none (a terminal shows bars)",
            resume="how often progress is shown"),
    Setting("model.name", "bourbia2021", "the network (docs/models.md)",
            choices=lambda: tuple(_models().list_models())),
    Setting("model.init", None, "pre-trained weights of part of the network (padnet: python -m "
            "siqa.models.padnet_pretrain)", path=True),
    Setting("dataset.name", "demo", "the database (docs/databases.md)",
            choices=lambda: tuple(_databases().DATABASES)),
    Setting("dataset.root", None, "database folder as distributed; demo: null = data/demo "
            "(built on first use)",
            used_when=lambda c: (_databases().takes(_dataset(c), "root")
                                 or not Settings(c).dataset.manifest),
            used_with="a database without a manifest (dataset.name=csv reads the manifest's own "
                      "folder)", path=True),
    Setting("dataset.manifest", None, "CSV manifest, with name=csv (left,right,score or "
            "sbs,score; optional ref,distortion,symmetric,left_score,right_score)",
            used_when=lambda c: _databases().takes(_dataset(c), "manifest"),
            used_with="dataset.name=csv (or a Waterloo database)", path=True),
    Setting("dataset.split", [0.6, 0.2, 0.2], "train / validation / test fractions of the scenes "
            "(content-disjoint)",
            used_when=lambda c: not Settings(c).dataset.split_file,
            used_with="a run without dataset.split_file (the file's splits replace the ratios)"),
    Setting("dataset.split_seed", 0, "seed of the content splits (train.seed only seeds "
            "initialisation and patch order)"),
    Setting("dataset.split_file", None, f"a {SPLITS} (of a run, or splits/<name>.json): train on "
            "exactly its first train.repeats splits (k-fold files: repetitions of their folds)", path=True),
    Setting("dataset.demo_size", "small", "demo only: small = 128x96 views (short CPU run) | full "
            "= native 611x344 views (LIVE-I-sized), in data/demo_full", choices=("small", "full"),
            used_when=lambda c: _databases().takes(_dataset(c), "demo_size"),
            used_with="dataset.name=demo"),
    Setting("protocol.design", "random", "random: train.repeats random 60/20/20 splits (the "
            "paper) | kfold: train.repeats repetitions of K folds of scenes, K splits each",
            choices=("random", "kfold")),
    Setting("protocol.folds", 5, "kfold only: K; every scene is tested once per repetition "
            "(validation from dataset.split's train:val ratio)", positive=True),
    Setting("patches.normalisation", "auto", "(p - mean) / (std + C) in 7x7 windows, "
            "bourbia2021 only: reference = C 1 on [0, 1] intensities, as the original (mostly "
            "mean removal) | contrast = C 1/255, the local contrast normalisation of Kang et al. "
            "(CVPR 2014)", choices=("reference", "contrast"), value_type=str, auto="recipe"),
    Setting("nss.marginal", "mle0", "mle0: 2-parameter Gamma MLE, loc 0 (well-posed) | "
            "scipy_free_loc: the original scipy call", choices=("mle0", "scipy_free_loc")),
    Setting("nss.preprocess", "reference", "reference: /225 then per-column standardisation "
            "(the published targets) | global", choices=("reference", "global")),
    Setting("nss.published", None, "folder with the authors' copula_parametre.txt + "
            "im_names.txt (LIVE Phase I only)", path=True),
    Setting("nss.cache_dir", "data/cache", "NSS targets are computed once per image content and "
            "setting", resume="where the content-addressed NSS targets are cached", path=True),
    Setting("nss.workers", 0, "processes for the NSS precompute; 0 = one per core",
            resume="processes for the NSS precompute: the same targets"),
    Setting("train.profile", "auto", "auto (short on the demo, paper elsewhere) | paper (the "
            "network's original recipe) | short (a run that learns in minutes on a CPU)",
            choices=("auto", "paper", "short")),
    Setting("train.epochs", "auto", "epochs", value_type=int, auto="recipe", positive=True),
    Setting("train.optimizer", "auto", "sgd (SGD with momentum) | adam", choices=("sgd", "adam"),
            value_type=str, auto="recipe"),
    Setting("train.lr", "auto", "learning rate (padnet: its own per-group rates on top)",
            value_type=float, auto="recipe"),
    Setting("train.batch_size", "auto", "patch pairs (crops) a step", value_type=int, auto="recipe",
            positive=True),
    Setting("train.momentum", 0.9, "SGD only", used_when=lambda c: Settings(c).train.optimizer == "sgd",
            used_with="train.optimizer=sgd"),
    Setting("train.weight_decay", "auto", "L2 penalty of the optimizer", value_type=float, auto="recipe"),
    Setting("train.nss_weight", "auto", "loss = L1(quality) + nss_weight * L1(nss); 0 = "
            "single-task ablation; > 0 adds an NSS head to multiscore, padnet or stereoqanet",
            value_type=float, auto="recipe"),
    Setting("train.lr_step", "auto", "0 = constant LR; N = x lr_gamma every N epochs", value_type=int,
            auto="recipe"),
    Setting("train.lr_gamma", "auto", "the LR factor of each step", value_type=float, auto="recipe",
            used_when=lambda c: Settings(c).train.lr_step > 0, used_with="train.lr_step > 0"),
    Setting("train.val_every", 1, "validate every k epochs (and always after the last)",
            positive=True),
    Setting("train.seed", 0, "seed of initialisation, patch order and dropout (split r: seed + r)"),
    Setting("train.repeats", 1, "N repetitions of protocol.design: random = N content splits, "
            "kfold = N x protocol.folds splits; a summary gives median, mean and std per metric",
            positive=True),
    Setting("train.splits", None, "null = all splits; [3, 7] = only those of the train.repeats (x "
            "protocol.folds) splits, each in out_dir/split_<r> (one per array task; summarize.py "
            "merges)", index_list=True,
            resume="which of the run's splits this process trains (an array task's share)"),
    Setting("train.concurrent_splits", False, "the run's splits at once in one process: false (one "
            "after another) | true (a step of each in turn; on CUDA a stream per split) | fused "
            "(one network with a split dimension: one set of kernels a step for all splits, "
            "siqa/training/fused.py; for GPUs)", choices=(False, True, "fused"), value_type=object,
            resume="the splits one after another or at once: the same runs (fused: to rounding)",
            used_when=lambda c: (split_count(c) or 2) > 1,
            used_with="a run of several splits (train.repeats > 1, or protocol.design=kfold)",
            formerly=("train.concurrent_repeats",)),
    Setting("train.amp", False, "CUDA only: bfloat16 autocast"),
    Setting("train.channels_last", True, "speed only: channels-last conv weights (same losses, "
            "~15% faster on CPU)"),
    Setting("train.patch_dtype", "float32", "how the resident patch tensors are stored",
            choices=("float32", "float16")),
    Setting("train.threads", 0, "CPU threads for torch; 0 = torch's default",
            resume="CPU threads (the card records them)"),
    Setting("train.deterministic", "auto", "auto (true on CPU, false on CUDA) | true | false: "
            "deterministic kernels (exact resume on CUDA)", value_type=bool, auto="device"),
    Setting("train.tf32", "auto", "auto (on for CUDA unless deterministic) | true | false: TF32 "
            "matmuls and convolutions on CUDA", value_type=bool, auto="device"),
    Setting("train.checkpoint_every", 1, f"write {LAST} every k epochs (and after the last), from a "
            "background copy", positive=True, resume=f"how often {LAST} is written"),
    Setting("train.keep_last", True, f"false: delete a split's {LAST} once it is tested "
            f"({METRICS} written; {BEST} stays, --resume skips the split, but it can no longer "
            "be extended with a larger train.epochs)",
            resume=f"whether a tested split keeps its {LAST} (disk only)"),
    Setting("train.scatter_every", 5, "TensorBoard scatter plot every k validations (and at the "
            "last)", positive=True),
    Setting("train.step", "auto", "auto (graph for one CUDA process, eager elsewhere) | eager | "
            "compile (torch.compile; its own CUDA graphs only for one split in one process) | "
            "graph (CUDA only: one CUDA-graph-captured step)",
            choices=("auto", "eager", "compile", "graph"),
            resume="eager, compile or graph: the same step, compiled or captured"),
    Setting("tensorboard.dir", "visualize/tensorboard", "where the curves are written",
            resume="where the curves are written", path=True),
)

BY_KEY = {s.key: s for s in SETTINGS}
FORMERLY = {old: s.key for s in SETTINGS for old in s.formerly}  # an earlier name -> the key

HEADER = """\
# Blind stereo IQA, multi-task CNN of Bourbia et al. (ICIP 2021).
# The defaults reproduce the paper's protocol; every deviation is a named option here.
# Override any key on the command line: python train.py train.epochs=10 dataset.name=csv ...
# Written by `python -m siqa.settings` from siqa/settings.py, where each key is declared."""

COLUMN = 27  # where the comments start
SECTION_NOTES = {  # a comment line under a section's name
    "train": "auto: the value of the network's recipe in train.profile (siqa/models/<network>.py, "
             "docs/models.md); an explicit value always wins",
}


def defaults() -> dict:
    """The nested config of every default."""
    tree = {}
    for s in SETTINGS:
        *parents, leaf = s.key.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = list(s.default) if isinstance(s.default, list) else s.default
    return tree


class Settings:
    """A config read by setting: `Settings(cfg).train.epochs` is cfg["train"]["epochs"].

    The names are the declared keys, and an earlier name (`formerly`) reads the key it became,
    so renaming a key is its declaration alone; a name that is not a setting fails, naming it.
    The values are those `siqa.config.check` converted to the declared types. Read-only: runs
    record, merge and compare the plain dict; code reads through this view."""

    __slots__ = ("_cfg", "_prefix")

    def __init__(self, cfg: dict, prefix=""):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name):
        if name.startswith("__"):  # copy, pickle and friends ask for dunders
            raise AttributeError(name)
        key = FORMERLY.get(self._prefix + name, self._prefix + name)
        if key in BY_KEY:
            node = self._cfg
            for part in key.split("."):
                node = node[part]
            return node
        if any(k.startswith(key + ".") for k in (*BY_KEY, *FORMERLY)):  # a section
            return Settings(self._cfg, key + ".")
        raise AttributeError(f"no setting {key} (siqa/settings.py declares every key)")

    def __setattr__(self, name, value):
        raise AttributeError(f"Settings is read-only: set {self._prefix}{name} in the config dict")

    def __reduce__(self):  # copy and pickle rebuild the view (setting slots is refused above)
        return Settings, (self._cfg, self._prefix)

    def __repr__(self):
        return f"Settings({self._prefix.rstrip('.') or 'config'})"


def choices_of(setting) -> tuple:
    return setting.choices() if callable(setting.choices) else setting.choices


def setting_choices(key) -> tuple:
    """The values a key takes, from its declaration: the one list the code that acts on them
    checks against."""
    return tuple(choices_of(BY_KEY[key]))


def comment(setting, recipes) -> str:
    """config.yaml's comment of a setting: its doc, the choices the doc does not name, and for
    a recipe key each network's paper value."""
    text = setting.doc
    choices = [_yaml(c) for c in choices_of(setting)]
    if choices and not all(c in text for c in choices):
        text += ": " + " | ".join(choices)
    if setting.auto == "recipe":
        values = ", ".join(f"{name} {_yaml(r['paper'][setting.key])}" for name, r in recipes.items()
                           if setting.key in r["paper"])
        text += f"; auto: the network's recipe (paper: {values})"
    return text


def config_yaml() -> str:
    """The text of config.yaml: every key with its default and its comment, by section."""
    from siqa.models import MODELS

    recipes = {name: cls.spec.recipes for name, cls in MODELS.items()}
    lines, section = [HEADER, ""], None
    for s in SETTINGS:
        *parents, leaf = s.key.split(".")
        if parents and parents[0] != section:
            section = parents[0]
            lines += ["", f"{section}:"]
            if section in SECTION_NOTES:
                lines.append(f"  # {SECTION_NOTES[section]}")
        indent = "  " * len(parents)
        text = f"{indent}{leaf}: {_yaml(s.default)}"
        lines.append(f"{text.ljust(COLUMN - 1)} # {comment(s, recipes)}")
    return "\n".join(lines) + "\n"


def listing(width=100) -> str:
    """Every setting as `train.py --list-settings` prints it: `key = default`, then its
    meaning (config.yaml's comment), the values it takes, what uses it, whether --resume may
    change it and its earlier names, from the one declaration."""
    import textwrap

    from siqa.models import MODELS

    recipes = {name: cls.spec.recipes for name, cls in MODELS.items()}
    lines = []
    for s in SETTINGS:
        facts = []
        facts.append("values: " + " | ".join(_takes(s)))
        if s.used_with:
            facts.append(f"used with {s.used_with}")
        facts.append(f"--resume may change it: {s.resume}" if s.resume else
                     "--resume keeps the recorded value")
        if s.formerly:
            facts.append("earlier name: " + ", ".join(s.formerly))
        lines.append(f"{s.key} = {_yaml(s.default)}")
        for text in (comment(s, recipes), "; ".join(facts)):
            lines += textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines) + "\n"


def _takes(s) -> list:
    """What a setting takes, as `listing` says it: its choices, else its kind (the check of
    siqa.config follows the default's type in the same way), and auto where it may be."""
    kind = s.value_type or type(s.default)
    choices = [_yaml(c) for c in choices_of(s)]
    if choices:
        pass
    elif s.index_list:
        choices = ["null", "a list of split indices"]
    elif s.default is None or s.path:
        choices = ["a path" if s.path else "a string"] + (["null"] if s.default is None else [])
    elif kind is bool:
        choices = ["true", "false"]
    elif kind is int:
        choices = ["a positive integer" if s.positive else "an integer >= 0"]
    elif kind is float:
        choices = ["a number"]
    elif kind is list:
        choices = [f"a list of {len(s.default)} numbers"]
    else:
        choices = ["a string"]
    return choices + (["auto"] if s.auto else [])


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


if __name__ == "__main__":
    sys.stdout.write(config_yaml())
