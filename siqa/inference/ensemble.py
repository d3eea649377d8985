"""The model of a run folder: the mean of its splits' best.pt (after k-fold, the fold models).

    siqa.load("runs/mine-kfold")                 a run folder, not a checkpoint file
      -> RunFolder.members: every split the run tested, in split order: split_<r>/ holding its
         metrics.json (written once the split's best.pt is tested) and best.pt; a run of
         one split is the folder itself. Splits not tested yet are left out and named.
      -> each best.pt loaded as siqa.load loads one (a StereoIQA each)
      -> FoldEnsemble
           score(pair)        (s_1 + ... + s_K) / K in float64, in split order, s_k the
                              score split k's own best.pt gives (siqa.load / predict.py on it)
           patch_scores(pair) the members' grids averaged (its mean is the score)
           naturalness(pair)  the members' predicted statistics averaged; computed once

Each member scores exactly as it does alone (its own batches, the same arithmetic), so the
ensemble's score of a pair is the mean of the K numbers predict.py prints for it with each
split's best.pt (tests/test_ensemble.py). A k-fold run's folds were each selected on their own
validation scenes and tested on their own fold of scenes: every scene of the database is in
the training or validation part of K-1 of the K models averaged.

The members must be one run's: the same network, database scale and patch normalisation (a
run folder merged by summarize.py is one run); anything else is a one-line UserError.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from siqa.data.splits import read_split_file
from siqa.errors import UserError
from siqa.runfolder import BEST, METRICS, SPLIT_PLACEHOLDER, RunFolder, SplitFolder


def load_run(folder, load_checkpoint) -> FoldEnsemble:
    """The FoldEnsemble of a run folder; `load_checkpoint(path)` loads one best.pt (siqa.load
    with the caller's device). UserError (one line) for a folder without a tested split."""
    folder = Path(folder)
    done, left_out = RunFolder(folder).members()
    if not done:
        raise UserError(f"{folder} holds no finished split (a {SPLIT_PLACEHOLDER}/ or the folder itself with "
                        f"{BEST} and {METRICS}, written once a split is tested): finish the run "
                        f"(python train.py --resume out_dir={folder}) or give a checkpoint file")
    members = [load_checkpoint(SplitFolder(d).best) for d in done]
    names = [d.name if d != folder else BEST for d in done]
    return FoldEnsemble(members, names, source=str(folder), left_out=left_out,
                        design=describe_design(folder))


def describe_design(folder) -> str:
    """'k-fold, 5 folds x 2 repetitions' / '3 random splits' from a run's splits.json ('' if none)."""
    path = RunFolder(folder).splits_file
    if not path.is_file():
        return ""
    doc = read_split_file(path)
    count, folds = len(doc["splits"]), doc.get("folds")
    if folds:
        reps = count // int(folds)
        return f"k-fold, {folds} folds x {reps} repetition{'s' if reps > 1 else ''}"
    return f"{count} random split{'s' if count > 1 else ''}"


def _mean(values):
    """(v_1 + ... + v_K) / K, added in member order (floats, or float64 arrays)."""
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total / len(values)


class FoldEnsemble:
    """The mean of several StereoIQA models of one run (see the module docstring); scores
    as StereoIQA does (`score`, `score_pairs`, `iter_scores`, `patch_scores`, `naturalness`,
    `lower_better`, `score_range`, `database`, `name`, `spec`, `near_constant`).

    members: the models, in split order; splits: their names ("split_0", ...; "best.pt" for a
    run of one split); left_out: the run's splits not tested yet; design: how the run split its
    scenes ("k-fold, 5 folds x 1 repetition")."""

    def __init__(self, members, splits, source="the run", left_out=(), design=""):
        if not members or len(members) != len(splits):
            raise ValueError("a FoldEnsemble needs one name per member, and at least one member")
        self.members, self.splits = list(members), list(splits)
        self.left_out, self.source, self.design = list(left_out), source, design
        first = self.members[0]
        for name, member in zip(self.splits[1:], self.members[1:]):
            mine = (member.name, member.database, member.normalisation)
            if mine != (first.name, first.database, first.normalisation):
                raise UserError(f"{source}: {name} is not a model of the same run as {self.splits[0]} "
                                f"(network, database scale or patch normalisation differ: {mine[0]}, "
                                f"{mine[1].get('name')}, {mine[2]} against {first.name}, "
                                f"{first.database.get('name')}, {first.normalisation})")
        self.name, self.spec, self.database = first.name, first.spec, first.database
        self.device = first.device

    @property
    def lower_better(self) -> bool:
        return self.members[0].lower_better

    @property
    def score_range(self):
        return self.members[0].score_range

    def describe_scale(self) -> str:
        return self.members[0].describe_scale()

    def describe_members(self) -> str:
        """One line: which models are averaged (predict.py's header)."""
        design = f", {self.design}" if self.design else ""
        if self.splits == [BEST]:  # a run of one split: its folder holds the one model
            return f"one model ({self.name}{design}): the {BEST} of {self.source}"
        line = (f"mean of {len(self.members)} model{'s' if len(self.members) > 1 else ''} "
                f"({self.name}{design}): the {BEST} of {', '.join(self.splits)} in {self.source}")
        if self.left_out:
            line += f"; not tested yet, left out: {', '.join(self.left_out)}"
        return line

    @property
    def near_constant(self):
        """True where a member's run measured near-constant validation predictions (each
        member's load warned of it); None where no member records it."""
        flags = [member.near_constant for member in self.members]
        if any(flags):
            return True
        return None if all(flag is None for flag in flags) else False

    def near_constant_message(self) -> str:
        """The near-constant members' warnings, on one line."""
        return "; ".join(member.near_constant_message() for member in self.members
                         if member.near_constant)

    def __repr__(self):
        left = f", left_out={self.left_out}" if self.left_out else ""
        return (f"FoldEnsemble({self.source}, {self.name}, splits={self.splits}{left}, "
                f"database={self.database['name']!r}, lower_better={self.lower_better}, "
                f"device={self.device})")

    # -- scoring: each member as alone, then the mean ---------------------------------------
    def score(self, left=None, right=None, *, sbs=None):
        """Score of one pair (a float) or of a list of pairs (a float64 array): the mean of
        the members' scores."""
        scores = [member.score(left, right, sbs=sbs) for member in self.members]
        return float(_mean(scores)) if isinstance(scores[0], float) else _mean(scores)

    def score_pairs(self, pairs):
        return np.fromiter(self.iter_scores(pairs), dtype=np.float64)

    def iter_scores(self, pairs):
        """One mean score per (left, right_or_None) pair, streamed: each member reads its own
        copy of the stream (itertools.tee), so every member cuts its batches as it does alone."""
        streams = itertools.tee(pairs, len(self.members))
        for scores in zip(*(member.iter_scores(s) for member, s in zip(self.members, streams))):
            yield _mean(scores)

    def patch_scores(self, left=None, right=None, *, sbs=None):
        """The members' (rows, cols) grids averaged patch by patch (a list for a list)."""
        grids = [member.patch_scores(left, right, sbs=sbs) for member in self.members]
        if isinstance(grids[0], np.ndarray):
            return _mean(grids)
        return [_mean(list(each)) for each in zip(*grids)]

    def naturalness(self, left=None, right=None, *, sbs=None):
        """Task 1's statistics averaged over the members, beside the statistics computed from
        the views (once, with the first member's NSS settings)."""
        first = self.members[0].naturalness(left, right, sbs=sbs)
        others = [member.predicted_naturalness(left, right, sbs=sbs) for member in self.members[1:]]
        return type(first)(_mean([first.predicted, *others]), first.computed)
