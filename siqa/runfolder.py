"""The run folder: where a training run's files lie, and what they say of its state.

    out_dir/                      RunFolder(out_dir)
      config.yaml                 the whole run's resolved config (train.splits: null)
      splits.json                 the split document: how many splits the run has
      summary.json                a run of several splits: median and spread of the tests,
                                  the run's protocol card (key "protocol"), its verdict
      scatter.png                 k-fold: the pooled out-of-fold predictions
      split_<r>/                  SplitFolder of split r, for a run of several splits
        best.pt                   the best-validation checkpoint (siqa.evaluation.selection)
        last.pt                   the state after the last completed epoch (--resume)
        .best-at-last.pt          best.pt as it was when last.pt was written
                                  (siqa.training.checkpoints.BestLastPair)
        metrics.json              the test report and the split's protocol card (key "protocol")
        predictions.csv           the scores of the validation and test pairs
        eval_<database>_<split>/  evaluate.py's files, laid out as a split's (metrics.json,
                                  predictions.csv, scatter.png); a run's evaluation
                                  summary as a run's (summary.json, scatter.png)

A run of one split is its own split folder: best.pt, last.pt, metrics.json and
predictions.csv lie in out_dir beside config.yaml.

A split is tested once its metrics.json is written (after best.pt); it is finished for
`epochs` when it was tested and reached them (its last.pt's epoch, or where
train.keep_last=false deleted last.pt, the epochs its metrics.json records). A tested split
without last.pt cannot be extended. A run is finished when the splits it trains are, and a
whole run of several splits wrote summary.json.

This module reads JSON files only: the epoch of a last.pt is read by the caller's
`saved_epoch(path)` (siqa.training.checkpoints.saved_epoch), so that the checkpoint format
(siqa.checkpoint) can name these files in its messages.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

from siqa.errors import UserError

CONFIG = "config.yaml"
SPLITS = "splits.json"
SUMMARY = "summary.json"
SCATTER = "scatter.png"
BEST = "best.pt"
LAST = "last.pt"
BEST_BACKUP = ".best-at-last.pt"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
SPLIT_PREFIX = "split_"
SPLIT_PLACEHOLDER = f"{SPLIT_PREFIX}<r>"  # how messages name any split's folder


def split_name(r) -> str:
    """The folder name of split `r` of a run of several splits."""
    return f"{SPLIT_PREFIX}{r}"


def split_index(name):
    """r of a folder named split_<r>; None for any other name."""
    found = re.fullmatch(rf"{SPLIT_PREFIX}(\d+)", name)
    return int(found.group(1)) if found else None


def evaluation_name(database, split) -> str:
    """The folder evaluate.py writes beside a checkpoint: eval_<database>_<split>."""
    return f"eval_{database}_{split}"


@dataclass(frozen=True)
class SplitFolder:
    """The folder of one split's files (a run of one split: the run folder itself)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best_backup(self) -> Path:
        return self.path / BEST_BACKUP

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def scatter(self) -> Path:  # an evaluation's scatter plot
        return self.path / SCATTER

    def evaluation(self, database, split) -> Path:
        """Where evaluate.py writes its files for this split's best.pt."""
        return self.path / evaluation_name(database, split)

    def tested(self) -> bool:
        """Its best.pt was tested: metrics.json and best.pt are there."""
        return self.metrics.is_file() and self.best.is_file()

    def holds_run(self) -> bool:
        """A run's files are here (a last.pt or a metrics.json)."""
        return any(path.exists() for path in (self.last, self.metrics))

    def tested_epochs(self) -> int:
        """The train.epochs of a tested split (its metrics.json)."""
        return int(json.loads(self.metrics.read_text()).get("epochs", 0))

    def finished(self, epochs, saved_epoch) -> bool:
        """Tested after `epochs` (see the module docstring): --resume skips it."""
        if not self.metrics.is_file():
            return False
        if self.last.is_file():
            return saved_epoch(self.last) >= epochs
        return self.tested_epochs() >= epochs

    def check_extendable(self, epochs):
        """UserError (one line), before --resume trains anything, for a tested split without
        its last.pt (train.keep_last=false): a larger train.epochs cannot continue it."""
        if self.metrics.is_file() and not self.last.is_file():
            raise UserError(f"--resume train.epochs={epochs}: {self.path} was tested after "
                            f"{self.tested_epochs()} epochs and its {LAST} deleted "
                            "(train.keep_last=false), so it cannot be continued; train a new run "
                            "(another out_dir=...)")


@dataclass(frozen=True)
class RunFolder:
    """A run folder (see the module docstring): its files, its splits' folders, its state."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def splits_file(self) -> Path:
        return self.path / SPLITS

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def scatter(self) -> Path:
        return self.path / SCATTER

    @property
    def single(self) -> SplitFolder:
        """The split of a run of one split: the run folder itself."""
        return SplitFolder(self.path)

    def split_folder(self, r) -> SplitFolder:
        """Split r of a run of several splits: split_<r>/."""
        return SplitFolder(self.path / split_name(r))

    def split(self, r, count) -> SplitFolder:
        """Split r of a run of `count` splits."""
        return self.single if count == 1 else self.split_folder(r)

    def splits(self, count) -> list:
        """The SplitFolders of a run of `count` splits, in split order."""
        return [self.split(r, count) for r in range(count)]

    def split_count(self) -> int:
        """How many splits splits.json names (UserError where it is not a split file)."""
        from siqa.data.splits import read_split_file

        return len(read_split_file(self.splits_file)["splits"])

    def members(self) -> tuple:
        """(the folders of the splits the run tested, in split order; the names of those it
        did not). A run of one split is its own folder; a run of several names them in
        splits.json, or else by its split_<r> folders."""
        if self.single.best.is_file() or self.single.metrics.is_file():
            candidates = [self.path]
        elif self.splits_file.is_file():
            candidates = [split.path for split in self.splits(self.split_count())]
        else:
            found = [p for p in self.path.glob(f"{SPLIT_PREFIX}*")
                     if split_index(p.name) is not None and p.is_dir()]
            candidates = sorted(found, key=lambda p: split_index(p.name))
        done = [d for d in candidates if SplitFolder(d).tested()]
        return done, [d.name for d in candidates if d not in done]

    def finished(self, chosen, count, epochs, saved_epoch, whole) -> bool:
        """The `chosen` splits of a run of `count` are finished for `epochs`, and a `whole`
        run of several splits wrote its summary."""
        done = all(self.split(r, count).finished(epochs, saved_epoch) for r in chosen)
        return done and (count == 1 or not whole or self.summary.is_file())

    def occupied(self, chosen=None):
        """Where a new run would write over a run's files, or None: the run folder holding a
        config.yaml, last.pt or metrics.json; with `chosen` splits (array tasks sharing the
        folder, train.splits) the run folder or a chosen split's folder holding a last.pt
        or metrics.json."""
        if chosen is not None:
            for split in [self.single, *(self.split_folder(r) for r in chosen)]:
                if split.holds_run():
                    return split.path
            return None
        return self.path if self.config.exists() or self.single.holds_run() else None
