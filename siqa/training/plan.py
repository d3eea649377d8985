"""What every split of a run shares, read and checked before any folder is written.

    config --checks (siqa.training.preflight)--> the first log line (siqa.training.notes)
           --> database --> content splits (seeded, or dataset.split_file) --> which splits
               this process trains --> NSS targets (cached; none for a network without them)
           --> Plan

Rank 0 builds the demo database and fills the NSS cache; the other ranks then read them (a
long wait on the host group, whose timeout fits a cold cache of a large database).
"""
from dataclasses import dataclass

import numpy as np

from siqa import config as config_mod
from siqa.build import check_init
from siqa.data import load_database_from_config
from siqa.data.nss import nss_from_config
from siqa.data.overlap import split_content_notes
from siqa.data.records import database_info
from siqa.data.splits import splits_for_run
from siqa.device import configure_numerics
from siqa.evaluation import protocol
from siqa.progress import shown
from siqa.runfolder import RunFolder
from siqa.settings import Settings
from siqa.training.notes import first_line
from siqa.training.preflight import (
    check_config,
    check_demo_size,
    check_model_inputs,
    check_tested,
    chosen_splits,
)


@dataclass
class Plan:
    """What every split of a run shares (see the module docstring)."""

    cfg: dict  # resolved: no `auto` left
    pairs: list
    splits: list  # [{"train": [i, ...], "val": [...], "test": [...]}, ...]
    record: dict  # the split document and what the protocol card needs
    nss: np.ndarray  # (pairs, 108), or (pairs, 0) for a network without the NSS task
    info: dict  # siqa.data.records.database_info
    chosen: list  # the splits this process trains (train.splits, or all)

    @property
    def out_dir(self):
        return config_mod.run_dir_of(self.cfg)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.out_dir)

    def split_folder(self, r):
        return self.folder.split(r, len(self.splits))


def prepare(cfg, dist, progress, log, changes) -> Plan:
    """Every check, the database, the splits and the NSS targets of a run."""
    check_config(cfg, dist)
    settings = Settings(cfg)
    numerics = configure_numerics(settings.train.deterministic, settings.train.tf32, dist.device)
    log(first_line(cfg, dist, numerics))
    check_demo_size(cfg)
    check_init(cfg)
    if not dist.is_main:
        dist.wait_for_main()
    pairs = load_database_from_config(settings, progress=shown(progress, dist.is_main))
    splits, split_doc = splits_for_run(pairs, settings)  # seeded, or dataset.split_file
    for line in split_content_notes(pairs, splits, settings):  # shared view files (kfold: refused)
        log(line)
    chosen = chosen_splits(cfg, len(splits))
    check_tested(cfg, splits)
    record = {"splits": split_doc, "split_info": protocol.split_info(cfg, split_doc),
              "code": protocol.git_state(), "changes": changes or {}}
    spec = check_model_inputs(cfg, pairs)
    if spec.predicts_nss:  # computed on the run's device: cuda:1 computes on cuda:1
        nss = nss_from_config(pairs, settings, progress=shown(progress, dist.is_main),
                              device=dist.device)
    else:  # a network without the NSS task needs no targets (nothing is computed)
        nss = np.zeros((len(pairs), 0), dtype=np.float32)
    if dist.is_main:
        dist.wait_for_main()
    return Plan(cfg, pairs, splits, record, nss, database_info(settings.dataset.name, pairs),
                chosen)
