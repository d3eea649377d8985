"""A whole training run, from the config to the files it writes.

    prepare   checks -> database -> content splits -> NSS targets   (siqa.training.plan,
              before any folder exists)
    splits    each split trained (one after another, or at once: train.concurrent_splits;
              siqa.training.schedule), each a SplitRun (siqa.training.split_run):
                resident patches -> model, optimizer (or last.pt on --resume)
                -> epochs: train, validate and log, checkpoint
                -> test of the best-validation checkpoint -> metrics.json, predictions.csv
    summary   several splits: summary.json (median, spread; k-fold: pooled out-of-fold)
    verdict   whether the run learned, as compare.py judges it (summary.json, or a single
              split's metrics.json: "learning"), its last log line; a final fit (no test
              pairs): only near-constant training predictions say it did not

Where each file lies is siqa.runfolder's; which epoch is tested, siqa.evaluation.selection's.
"""
import time

from siqa import config as config_mod
from siqa.evaluation import protocol
from siqa.evaluation.comparison import (
    judge,
    judge_untested,
    load_run,
    per_distortion,
    save_pooled_scatter,
)
from siqa.evaluation.comparison_tables import judgement_line, per_distortion_lines, untested_line
from siqa.evaluation.reports import (
    final_fit_epochs,
    final_fit_line,
    pooled_line,
    pooled_out_of_fold,
    summarize,
    write_json,
)
from siqa.files import read_json
from siqa.settings import Settings
from siqa.training.distributed import Dist
from siqa.training.plan import prepare
from siqa.training.schedule import train_splits


def train(cfg, resume=False, dist=None, progress=True, log=print, changes=None):
    """Train (and test) on every configured split; returns the test report(s).
    `changes`: {key: [recorded, now]} of a resume's allowed changes (siqa.config), kept with
    the run's checkpoints and protocol card."""
    started = time.perf_counter()
    dist = dist or Dist()  # one process on the CPU
    cfg = config_mod.absolute_paths(cfg)  # as the run records them: one folder from anywhere
    plan = prepare(cfg, dist, progress, log, changes)
    reports = train_splits(plan, resume, dist, progress, log)
    cfg = plan.cfg
    if Settings(cfg).train.splits is not None:  # a part of the run: summarize.py merges the parts
        if dist.is_main:
            log(merge_hint(plan.chosen, len(plan.splits), plan.out_dir))
        return [reports[r] for r in plan.chosen]
    if len(plan.splits) > 1 and dist.is_main:
        write_summary(plan, reports, dist, started, log)
    elif reports[0] is not None and dist.is_main:  # one split, tested (not a final fit)
        judge_split(plan, log)
    elif dist.is_main:  # a final fit: only its training predictions can tell
        judge_final_fit(plan, log)
    return reports


def judge_split(plan, log):
    """A run of one tested split: whether it learned ("learning" added to its metrics.json),
    its metrics per distortion and the verdict, logged."""
    run = load_run(plan.out_dir)
    judged = judge(run)
    metrics = read_json(plan.folder.single.metrics)
    write_json(plan.folder.single.metrics, {**metrics, "learning": judged})
    for line in per_distortion_lines(per_distortion(run)):
        log(line)
    log(judgement_line(judged, "this run"))


def judge_final_fit(plan, log):
    """A run of one split without test pairs: as far as its training predictions tell,
    whether it learned ("learning" added to its metrics.json), logged."""
    metrics = read_json(plan.folder.single.metrics)
    judged = judge_untested(metrics)
    write_json(plan.folder.single.metrics, {**metrics, "learning": judged})
    log(untested_line(judged, "this run"))


def merge_hint(chosen, count, out_dir) -> str:
    """What a part of a run (train.splits) says at its end: summarize.py's --out form, right
    whether the tasks share out_dir or each have their own (docs/usage.md#on-a-cluster)."""
    which = f"{'split' if len(chosen) == 1 else 'splits'} {', '.join(map(str, chosen))}"
    return (f"{which} of {count} trained; once every split is, merge them: python summarize.py "
            f"{out_dir} [the other tasks' out_dirs] --out MERGED_DIR (tasks that share "
            f"out_dir={out_dir} give it once)")


def write_summary(plan, reports, dist, started, log):
    """summary.json of a run of several splits: median and spread of each metric, the
    protocol card, the metrics per distortion ("per_distortion", as compare.py aggregates
    them), for k-fold the pooled out-of-fold predictions per repetition, their scatter plot
    (scatter.png) and the epochs of a final fit ("final_fit"), and whether the run learned
    ("learning", siqa.evaluation.comparison.judge: compare.py's verdict)."""
    split_doc = plan.record["splits"]
    card = protocol.card(plan.cfg, plan.record["split_info"], dist.device, started, reports,
                         code=plan.record["code"])
    summary = {**summarize(reports), "protocol": card}
    if split_doc.get("folds"):
        summary["pooled"] = pooled_out_of_fold(
            plan.pairs, [split.predictions for split in plan.folder.splits(len(plan.splits))],
            split_doc["folds"])
        for rep in summary["pooled"]["repetitions"]:
            log(pooled_line(rep))
    run = load_run(plan.out_dir)
    summary["learning"] = judge(run)  # compare.py's verdict on this run
    summary["per_distortion"] = per_distortion(run)  # as the leaderboard aggregates
    for line in per_distortion_lines(summary["per_distortion"]):
        log(line)
    if split_doc.get("folds"):  # the pooled scatter, the epochs of a final fit (or why not)
        save_pooled_scatter(run, plan.folder.scatter)
        summary["final_fit"] = final_fit_epochs(
            [read_json(split.metrics) for split in plan.folder.splits(len(plan.splits))],
            summary["learning"])
        log(final_fit_line(summary["final_fit"]))
    write_json(plan.folder.summary, summary)
    log(judgement_line(summary["learning"], "this run"))
