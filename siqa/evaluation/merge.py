"""Merge a run trained in parts (`train.splits`, one scheduler array task each) into the
`summary.json` that one run of all its splits writes.

    RUN_DIR A: splits.json, split_3/ ─┐  one split document (document_sha256)? else refuse
    RUN_DIR B: splits.json, split_7/ ─┤  one config, apart from PER_TASK_KEYS? else refuse
    ...                               ┘  every split 0..N-1 exactly once? else refuse
        │
        ├─ summarize() of the splits' test reports (metrics.json "test", as the run keeps them)
        ├─ the whole run's protocol card, rebuilt from the splits' cards (siqa.evaluation.protocol.card)
        ├─ k-fold design: the pooled out-of-fold report (reads the database for its pair
        │  order: the pooled metrics are computed in database order, as the run does)
        └─ whether the run learned (siqa.evaluation.comparison.judge), as the run says it

What differs by design from the summary of one `train.repeats=N` run (and nothing else:
tests/test_summarize.py compares them key by key):
- protocol.wall_time_s: the sum of the splits' own wall times (one run counts its data
  loading and NSS targets once, and the parts count them once per task);
- protocol.config.out_dir (the merged folder) and the per-task keys of PER_TASK_KEYS that the
  tasks were free to set (taken from split 0), hence protocol.config_sha256;
- "merged_from": the split folders, in split order (only in a merged summary).
The card's code, versions, device and cpu_threads are split 0's.
"""
import json
import os
from pathlib import Path

from siqa import config as config_mod
from siqa.data import load_database_from_config
from siqa.data.splits import document_sha256, pair_list_sha256
from siqa.errors import UserError, counted
from siqa.evaluation import protocol
from siqa.evaluation.comparison import judge, load_run, per_distortion
from siqa.evaluation.comparison_tables import judgement_line, per_distortion_lines
from siqa.evaluation.reports import (
    final_fit_epochs,
    final_fit_line,
    fmt_metric,
    pooled_line,
    pooled_out_of_fold,
    summarize,
    write_json,
)
from siqa.files import atomic_write_text, read_json
from siqa.runfolder import SPLITS, SUMMARY, RunFolder, SplitFolder
from siqa.settings import Settings

# Config keys that may differ between the parts of one run: where each task writes, and
# where caches and logs go. Anything else (threads, device, learning rate, ...) changes
# the numbers or the protocol, and the parts are refused.
PER_TASK_KEYS = ("out_dir", "train.splits", "tensorboard.dir", "nss.cache_dir", "progress_every")


def split_folders(run_dirs) -> tuple:
    """(split document, document path, {r: split folder}) of the parts in `run_dirs`;
    UserError (one line, naming the folders) for parts of different runs or a split twice."""

    doc = source = None
    found = {}
    for folder in dict.fromkeys(Path(d).resolve() for d in run_dirs):
        run = RunFolder(folder)
        if not run.splits_file.is_file():
            raise UserError(f"{folder} is not a run folder (no {SPLITS})")
        this = read_json(run.splits_file)
        if doc is None:
            doc, source = this, folder
        elif document_sha256(this) != document_sha256(doc):
            raise UserError(f"{source} and {folder} were trained on different splits (their "
                            f"{SPLITS} differ): they are not parts of one run")
        count = len(this["splits"])
        for r, split in enumerate(run.splits(count)):
            d = split.path
            if not split.metrics.is_file():
                continue  # not this task's split, or not finished
            if r in found and found[r].resolve() != d.resolve():
                raise UserError(f"split {r} is in both {found[r]} and {d}: give each split once")
            found[r] = d
    missing = [r for r in range(len(doc["splits"])) if r not in found]
    if missing:
        listed = ",".join(map(str, missing))
        raise UserError(f"split(s) {listed} of {len(doc['splits'])} are not finished in "
                        f"{', '.join(str(Path(d)) for d in run_dirs)}: train them with "
                        f"train.splits=[{listed}] (or finish them with --resume)")
    return doc, RunFolder(source).splits_file, found


def _comparable(cfg) -> dict:
    """A part's recorded config, flat, by the settings' current names, less the per-task keys."""
    flat = {config_mod.current_key(k): v for k, v in config_mod.flatten(cfg).items()}
    return {k: v for k, v in flat.items() if k not in PER_TASK_KEYS}


def merged_summary(run_dirs, out_dir, log=print) -> dict:
    """The summary.json of the run whose parts are in `run_dirs` (see the module docstring),
    its config's out_dir set to `out_dir`."""

    doc, doc_path, found = split_folders(run_dirs)
    source = doc_path.parent
    count = len(doc["splits"])
    if count == 1:
        raise UserError(f"a run of one split has no {SUMMARY}: there is nothing to merge")
    split = {r: SplitFolder(found[r]) for r in range(count)}
    metrics = {r: read_json(split[r].metrics) for r in range(count)}
    cards = {r: m.get("protocol") for r, m in metrics.items()}
    for r, card in cards.items():
        if not card or protocol.split_index(card) != r:
            raise UserError(f"{split[r].metrics} has no protocol card of split {r}: "
                            "written by another version")
    base = _comparable(cards[0]["config"])
    for r in range(1, count):
        other = _comparable(cards[r]["config"])
        if other != base:
            key = next(k for k in sorted(set(base) | set(other)) if base.get(k) != other.get(k))
            raise UserError(f"{found[0]} and {found[r]} were trained with different configs "
                            f"({key}: {base.get(key)!r} vs {other.get(key)!r}): they are not "
                            "parts of one run")
    reports = [metrics[r]["test"] for r in range(count)]
    cfg = json.loads(json.dumps(cards[0]["config"]))  # a copy
    cfg["out_dir"] = os.path.abspath(out_dir)  # recorded absolute, as a run records it
    cfg["train"]["splits"] = None
    card = dict(cards[0])  # the whole run's card, in protocol.card's key order
    card.pop("resumes", None)  # a split's own history; each split's card keeps it
    card.update(config=cfg, config_sha256=protocol.config_sha256(cfg),
                splits={**protocol.split_entry(card["splits"]), "index": None},
                seeds={**card["seeds"],
                       "init_and_order": [Settings(cfg).train.seed + r for r in range(count)]},
                wall_time_s=round(sum(c["wall_time_s"] for c in cards.values()), 3),
                logistic=[cards[r]["logistic"] for r in range(count)],
                predictions=[cards[r].get("predictions") or protocol.spread_status(None)
                             for r in range(count)])
    summary = {**summarize(reports), "protocol": card}
    if doc.get("folds"):

        settings = Settings(cfg)
        pairs = load_database_from_config(settings)
        if pair_list_sha256(pairs) != doc["pairs_sha256"]:
            raise UserError(f"the database of {found[0]} ({settings.dataset.name}) is not the "
                            "one the run was trained on (pair-list hash differs)")
        summary["pooled"] = pooled_out_of_fold(
            pairs, [split[r].predictions for r in range(count)], doc["folds"])
        for rep in summary["pooled"]["repetitions"]:
            log(pooled_line(rep))
    run = load_run(source, split_dirs=[found[r] for r in range(count)])
    summary["learning"] = judge(run)
    summary["per_distortion"] = per_distortion(run)
    for line in per_distortion_lines(summary["per_distortion"]):
        log(line)
    if doc.get("folds"):
        summary["final_fit"] = final_fit_epochs([metrics[r] for r in range(count)],
                                                summary["learning"])
        log(final_fit_line(summary["final_fit"]))
    log(judgement_line(summary["learning"], "this run"))
    summary["merged_from"] = [str(found[r]) for r in range(count)]
    return summary


def merge(run_dirs, out=None, log=print) -> Path:
    """Write the merged run into `out` (default: the one RUN_DIR given): summary.json, and
    where `out` lacks them splits.json, config.yaml and split_<r> links to the parts, so
    that compare.py and evaluate.py read `out` as one run. Returns out/summary.json."""

    if out is None:
        if len({Path(d).resolve() for d in run_dirs}) > 1:
            raise UserError("several RUN_DIRs: name the merged run's folder with --out DIR")
        out = run_dirs[0]
    out = Path(out)
    summary = merged_summary(run_dirs, out, log=log)
    out.mkdir(parents=True, exist_ok=True)
    merged = RunFolder(out)
    doc_path = split_folders(run_dirs)[1]
    if not merged.splits_file.is_file():
        atomic_write_text(merged.splits_file, doc_path.read_text())
    if not merged.config.is_file():
        atomic_write_text(merged.config, config_mod.dump(summary["protocol"]["config"]))
    for r, source in enumerate(summary["merged_from"]):
        link = merged.split_folder(r).path
        if not link.exists():
            os.symlink(Path(source).resolve(), link, target_is_directory=True)
    write_json(merged.summary, summary)
    median = {k: fmt_metric((summary[k] or {}).get("median")) for k in ("srocc", "plcc")}
    log(f"{counted(summary['splits'], 'split')} merged: SROCC median {median['srocc']}, PLCC median "
        f"{median['plcc']} -> {merged.summary}")
    return merged.summary
