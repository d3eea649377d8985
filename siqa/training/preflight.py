"""The checks a run passes before any work, in the order siqa.training.plan.prepare makes
them: each a UserError of one line naming the setting to change, raised before any folder
is written.

    check_config        step mode and device, NSS weight, concurrent splits under torchrun,
                        a network the fused splits cannot train (check_fusable)
    check_demo_size     crops larger than the small demo's views (before the demo is built)
    chosen_splits       train.splits outside the run's splits              (on its splits)
    check_tested        several splits, some without a test part
    check_model_inputs  a network that predicts what the database lacks    (on its pairs)
"""
import torch

from siqa import config as config_mod
from siqa.build import build_model, spec_of
from siqa.data.demo import VIEW_SIZE as DEMO_VIEW
from siqa.errors import UserError
from siqa.settings import Settings
from siqa.training.fused import FusedSplits
from siqa.training.step import check_step_mode


def check_config(cfg, dist):
    """Every check of the config alone, before the database is read (see the module docstring;
    the demo's size is checked before the demo is built)."""
    t = Settings(cfg).train
    concurrent = t.concurrent_splits
    check_step_mode(t.step, dist.device, dist.world)
    config_mod.check_nss_weight(cfg)
    if concurrent and dist.world > 1:
        raise UserError(f"train.concurrent_splits={str(concurrent).lower()} is for one process; "
                        "under torchrun the splits run one after another "
                        "(train.concurrent_splits=false)")
    if concurrent == "fused":
        check_fusable(cfg)


def check_fusable(cfg):
    """UserError (one line), before any work, for a network the fused splits cannot train
    (siqa.training.fused: its forward must run under torch.func.vmap): the probe of
    FusedSplits on one network built on the CPU, under a forked RNG (no random state moves)."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, torch.device("cpu"))
        FusedSplits.from_config([model], [torch.Generator()], cfg)


def check_demo_size(cfg):
    """UserError (one line), before the demo is built, for a network whose crops do not fit
    the small demo's views (PAD-Net's 256x256)."""
    settings, spec = Settings(cfg), spec_of(cfg)
    ds = settings.dataset
    if ds.name == "demo" and ds.demo_size == "small" and spec.patch > min(DEMO_VIEW):
        raise UserError(f"model.name={settings.model.name} cuts {spec.patch}x{spec.patch} crops, larger than "
                        f"the small demo's {DEMO_VIEW[0]}x{DEMO_VIEW[1]} views: use "
                        "dataset.demo_size=full (611x344 views)")


def chosen_splits(cfg, count) -> list:
    """The split indices this run trains: `train.splits` (in its order), or all `count`;
    UserError (one line) for an index outside the run's splits."""
    settings = Settings(cfg)
    chosen = settings.train.splits
    if chosen is None:
        return list(range(count))
    outside = [r for r in chosen if r >= count]
    if outside:
        source = settings.dataset.split_file or f"the {settings.protocol.design} design"
        raise UserError(f"train.splits={chosen}: split {outside[0]} does not exist; {source} "
                        f"with train.repeats={settings.train.repeats} gives splits 0..{count - 1}")
    return list(chosen)


def check_tested(cfg, splits):
    """UserError (one line), before any work, for several splits of which some have no test
    part: a split without a test is one final model on every pair (dataset.split [1, 0, 0]),
    and a run of several has no test to summarise."""
    if len(splits) > 1 and any(len(split["test"]) == 0 for split in splits):
        ds = Settings(cfg).dataset
        source = ds.split_file or f"dataset.split={ds.split}"
        raise UserError(f"{source} leaves the test part empty: that trains one final model "
                        f"(train.repeats=1), not {len(splits)} splits with no test to summarise")


def check_model_inputs(cfg, pairs):
    """The config's network's spec; a UserError, before any work, where the database lacks
    what the network predicts."""
    spec = spec_of(cfg)
    if spec.needs_view_scores:
        missing = [p.name for p in pairs if p.view_scores is None]
        if missing:
            settings = Settings(cfg)
            raise UserError(f"model.name={settings.model.name} predicts per-view scores, but "
                            f"{len(missing)} pairs of dataset.name={settings.dataset.name} have "
                            f"none (first: {missing[0]}); use a database that carries them "
                            "(the demo, Waterloo-IVC, a CSV manifest with left_score,right_score "
                            "columns)")
    return spec
