"""evaluate.py: score a database with a checkpoint, as its run scored its test split; or
with every tested split of a run folder, as the run summarised them.

    checkpoint --read_checkpoint--> network (the run's numerics and threads) + what it saw
    database   --evaluation_pairs--> the checkpoint's test split (its own database), or the
                                     pairs it has not seen (siqa.data.overlap, by content)
               --predict_database--> predictions --> metrics.json, predictions.csv, scatter.png

    run folder --> each tested split's best.pt as above (into split_<r>/eval_<database>_<split>/)
               --> summary.json: the run's summary of them (siqa.evaluation.reports.summarize)
                   and, for a k-fold run on its own test splits, the pooled out-of-fold report
                   (reports.pooled_out_of_fold): the numbers of the run's own summary.json;
                   scatter.png of the pooled predictions
"""
import time
from pathlib import Path

from siqa import config as config_mod
from siqa.build import load_model, read_checkpoint
from siqa.data import load_database_from_config
from siqa.data.overlap import evaluation_pairs
from siqa.data.splits import read_split_file
from siqa.device import select_device, use_run_threads
from siqa.errors import UserError, counted
from siqa.evaluation import protocol
from siqa.evaluation.comparison import load_run, save_pooled_scatter
from siqa.evaluation.matrix import oriented
from siqa.evaluation.metrics import near_constant_message
from siqa.evaluation.plots import save_scatter_png
from siqa.evaluation.reports import (
    fmt_metric,
    pooled_line,
    pooled_out_of_fold,
    predictions_csv,
    score_report,
    summarize,
    write_json,
)
from siqa.files import atomic_write_text
from siqa.runfolder import BEST, METRICS, SPLIT_PLACEHOLDER, RunFolder, SplitFolder
from siqa.scoring import predict_database
from siqa.settings import Settings


def evaluate(checkpoint, overrides=(), split="test", out=None, progress=True, log=print):
    """Score a database with a checkpoint; write metrics.json, predictions.csv, scatter.png
    into `out` (default: eval_<database>_<split> beside the checkpoint). Returns (the report,
    `out`, the part scored: "test", "all" or "all_less_seen")."""
    started = time.perf_counter()
    state = read_checkpoint(checkpoint, required=("model", "config", "split", "database"))
    cfg = config_mod.load_config(overrides=overrides, base=state["config"])
    config_mod.check_effect(cfg, overrides)  # no key without an effect
    cfg["patches"] = state["config"]["patches"]  # the model only knows its own input normalisation
    settings = Settings(cfg)
    device = select_device(settings.device)
    with use_run_threads(cfg):  # the caller's thread count is back afterwards
        pairs = load_database_from_config(settings, progress=progress)
        # which pairs the checkpoint trained, validated and tested on: by content (siqa.data.overlap)
        chosen = evaluation_pairs(pairs, state, split)
        if not chosen.pairs and not state["split"]["test"]:  # dataset.split [1, 0, 0]: a final fit
            raise UserError(f"{checkpoint} has no test split (every pair of its database was trained "
                            "or validated on): evaluate it on another database (dataset.name=..., "
                            "dataset.manifest=...)")
        if split == "test" and chosen.split != "test":
            log(f"note: not the checkpoint's database (its test split is not in it): "
                f"evaluating {chosen.describe()}")
        pairs, split = chosen.pairs, chosen.split.replace(" ", "_")
        if not pairs:
            raise UserError("every pair of this database is a training or validation pair of the "
                            "checkpoint: nothing to evaluate")
        model = load_model(state, device, source=checkpoint)
        pred = predict_database(model, pairs, cfg, device, progress=progress)
        report = score_report(pairs, pred, state["database"])  # spread: on the scale it learnt
        # MOS against DMOS, as --matrix: 1 means agreement
        report["oriented"] = oriented(pred, pairs, state["database"]["higher_is_better"])
        out = (Path(out) if out else
               SplitFolder(Path(checkpoint).parent).evaluation(settings.dataset.name, split))
        written = SplitFolder(out)  # laid out as a split's reports
        write_json(written.metrics, {split: report, "evaluated": chosen.describe(),
                                     "dropped_seen_pairs": chosen.dropped,
                                     "protocol": protocol.evaluation_card(
                                         cfg, checkpoint, device, started, report, pairs)})
        atomic_write_text(written.predictions, predictions_csv(pairs, pred, {p.name: split for p in pairs}))
        save_scatter_png(written.scatter, pred, [p.score for p in pairs],
                         [p.distortion for p in pairs],
                         title=f"{settings.dataset.name} ({split}, {counted(len(pairs), 'pair')})")
        log(f"{split}: {counted(len(pairs), 'pair')}, SROCC {fmt_metric(report['srocc'])} PLCC "
            f"{fmt_metric(report['plcc'])} KROCC {fmt_metric(report['krocc'])} RMSE "
            f"{report['rmse']:.3f} -> {out}")
        if report["spread"]["near_constant"]:
            log("warning: " + near_constant_message(report["spread"], f"the predictions of {checkpoint}"))
        if report["oriented"]["flipped"]:
            trained = "MOS" if state["database"]["higher_is_better"] else "DMOS"
            log(f"note: the checkpoint predicts {trained}, the database gives the other: oriented "
                f"SROCC {fmt_metric(report['oriented']['srocc'])} PLCC "
                f"{fmt_metric(report['oriented']['plcc'])} ({METRICS}: oriented)")
        return report, out, split


def evaluate_run(folder, overrides=(), split="test", out=None, progress=True, log=print):
    """Score a database with every tested split of a run folder (`evaluate` each best.pt,
    its files into split_<r>/eval_<database>_<split>/, or `out`/split_<r>/), then write the
    run's summary of them into `out` (default RUN_DIR/eval_<database>_<split>/summary.json):
    median and spread of each metric and, for a k-fold run scored on its own test splits,
    the pooled out-of-fold report. A run of one split is its one evaluation. Returns the
    summary (None for one split)."""
    folder = Path(folder)
    run = RunFolder(folder)
    done, left_out = run.members()
    if not done:
        raise UserError(f"{folder} holds no tested split (a {SPLIT_PLACEHOLDER}/ or the folder itself with "
                        f"{BEST} and {METRICS}): finish the run (python train.py --resume "
                        f"out_dir={folder}) or give a checkpoint file")
    if done == [folder]:
        evaluate(run.single.best, overrides, split, out, progress, log)
        return None
    scored = []
    for d in done:
        def say(line, name=d.name):
            log(f"{name}: {line}")
        scored.append(evaluate(SplitFolder(d).best, overrides, split, Path(out) / d.name if out else None,
                               progress, say))
    run_out = RunFolder(Path(out) if out else folder / scored[0][1].name)  # laid out as a run's
    summary = {**summarize([report for report, _, _ in scored]),
               "evaluated": [str(d) for d in done], "left_out": left_out}
    doc = read_split_file(run.splits_file)
    if doc.get("folds") and not left_out and all(part == "test" for _, _, part in scored):
        state = read_checkpoint(SplitFolder(done[0]).best, required=("config",))
        cfg = config_mod.load_config(overrides=overrides, base=state["config"])
        summary["pooled"] = pooled_out_of_fold(load_database_from_config(Settings(cfg), progress=progress),
                                               [SplitFolder(o).predictions for _, o, _ in scored],
                                               doc["folds"])
        save_pooled_scatter(load_run(folder, split_dirs=[o for _, o, _ in scored]),
                            run_out.scatter)
    write_json(run_out.summary, summary)
    log(f"{counted(len(done), 'split')} of {folder}: SROCC median "
        f"{fmt_metric((summary['srocc'] or {}).get('median'))} PLCC median "
        f"{fmt_metric((summary['plcc'] or {}).get('median'))} -> {run_out.summary}"
        + (f" ({', '.join(left_out)} not tested yet: left out)" if left_out else ""))
    for rep in (summary.get("pooled") or {}).get("repetitions", []):
        log(pooled_line(rep))
    return summary

