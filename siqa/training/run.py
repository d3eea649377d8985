"""A whole training run, from the config to the files it writes.

    prepare   checks -> database -> content splits -> NSS targets   (before any folder exists)
    splits    for each split (one after another, or at once: train.concurrent_splits):
                SplitRun: resident patches -> model, optimizer (or last.pt on --resume)
                  -> epochs: train, validate and log, checkpoint      (siqa.training.checkpoints)
                  -> test of the best-validation checkpoint -> metrics.json, predictions.csv
    summary   several splits: summary.json (median, spread; k-fold: pooled out-of-fold)
    verdict   whether the run learned, as compare.py judges it (summary.json, or a single
              split's metrics.json: "learning"), its last log line

A split's run is a generator that yields after every training step, so that
siqa.training.concurrent can interleave the steps of several splits; one after another,
`finish` runs it to its end.
"""
import ctypes
import ctypes.util
import gc
import json
import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from siqa import config as config_mod
from siqa.build import amp_dtype_of, build_model, check_init, load_init, model_kwargs, spec_of
from siqa.checkpoint import load_checkpoint, rng_state
from siqa.data import load_database_from_config
from siqa.data.demo import VIEW_SIZE as DEMO_VIEW
from siqa.data.inputs import fill_random_crops, split_data
from siqa.data.nss import nss_from_config
from siqa.data.overlap import split_content_notes, split_identities
from siqa.data.patches import pixel_statistics, whole_views
from siqa.data.records import database_info
from siqa.data.splits import splits_for_run, write_split_file
from siqa.device import configure_numerics
from siqa.errors import UserError
from siqa.evaluation import protocol, selection
from siqa.evaluation.comparison import (
    judge,
    judgement_line,
    load_run,
    per_distortion,
    per_distortion_lines,
    save_pooled_scatter,
)
from siqa.evaluation.reports import (
    final_fit_epochs,
    final_fit_line,
    fmt_metric,
    near_constant_lines,
    pooled_line,
    pooled_out_of_fold,
    predictions_csv,
    score_report,
    split_log_lines,
    spread_of,
    summarize,
    validation_report,
    write_json,
)
from siqa.files import atomic_write_text, read_json
from siqa.progress import Every, shown
from siqa.progress import bar as progress_bar
from siqa.runfolder import BEST, RunFolder, split_name
from siqa.scoring import Scorer, predict_pairs
from siqa.training import preempt
from siqa.training.checkpoints import (
    BackgroundSaver,
    BestLastPair,
    cpu_copy,
    rank_states,
    reconcile_best,
    restore_rank_rng,
    saved_epoch,
    seed_rank_stream,
)
from siqa.training.concurrent import finish, interleave
from siqa.training.distributed import Dist
from siqa.training.fused import FusedSplits
from siqa.training.logbook import Logbook, tensorboard_name
from siqa.training.step import (
    TrainStep,
    check_step_mode,
    epoch_order,
    epoch_steps,
    fused_step,
    load_optimizer_state,
    make_optimizer,
    step_of,
)

PARTS = ("train", "val", "test")


@dataclass
class Plan:
    """What every split of a run shares, read and checked before any folder is written."""

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
    if cfg["train"]["splits"] is not None:  # a part of the run: summarize.py merges the parts
        if dist.is_main:
            log(merge_hint(plan.chosen, len(plan.splits), plan.out_dir))
        return [reports[r] for r in plan.chosen]
    if len(plan.splits) > 1 and dist.is_main:
        write_summary(plan, reports, dist, started, log)
    elif reports[0] is not None and dist.is_main:  # one split, tested (not a final fit)
        run = load_run(plan.out_dir)
        judged = judge(run)
        metrics = read_json(plan.folder.single.metrics)
        write_json(plan.folder.single.metrics, {**metrics, "learning": judged})
        for line in per_distortion_lines(per_distortion(run)):
            log(line)
        log(judgement_line(judged, "this run"))
    return reports


def merge_hint(chosen, count, out_dir) -> str:
    """What a part of a run (train.splits) says at its end: summarize.py's --out form, right
    whether the tasks share out_dir or each have their own (docs/usage.md#on-a-cluster)."""
    which = f"{'split' if len(chosen) == 1 else 'splits'} {', '.join(map(str, chosen))}"
    return (f"{which} of {count} trained; once every split is, merge them: python summarize.py "
            f"{out_dir} [the other tasks' out_dirs] --out MERGED_DIR (tasks that share "
            f"out_dir={out_dir} give it once)")


def prepare(cfg, dist, progress, log, changes) -> Plan:
    """Every check, the database, the splits and the NSS targets of a run. Rank 0 builds the
    demo database and fills the NSS cache; the other ranks then read them (a long wait on
    the host group, whose timeout fits a cold cache of a large database)."""
    concurrent = cfg["train"]["concurrent_splits"]
    check_step_mode(cfg["train"]["step"], dist.device, dist.world)
    config_mod.check_nss_weight(cfg)
    if concurrent and dist.world > 1:
        raise UserError(f"train.concurrent_splits={str(concurrent).lower()} is for one process; "
                        "under torchrun the splits run one after another "
                        "(train.concurrent_splits=false)")
    if concurrent == "fused":
        check_fusable(cfg)
    numerics = configure_numerics(cfg["train"]["deterministic"], cfg["train"]["tf32"], dist.device)
    log(first_line(cfg, dist, numerics))
    check_demo_size(cfg)
    check_init(cfg)
    if not dist.is_main:
        dist.wait_for_main()
    pairs = load_database_from_config(cfg, progress=shown(progress, dist.is_main))
    splits, split_doc = splits_for_run(pairs, cfg)  # seeded, or dataset.split_file
    for line in split_content_notes(pairs, splits, cfg):  # shared view files (kfold: refused)
        log(line)
    chosen = chosen_splits(cfg, len(splits))
    check_tested(cfg, splits)
    record = {"splits": split_doc, "split_info": protocol.split_info(cfg, split_doc),
              "code": protocol.git_state(), "changes": changes or {}}
    spec = check_model_inputs(cfg, pairs)
    if spec.predicts_nss:  # computed on the run's device: cuda:1 computes on cuda:1
        nss = nss_from_config(pairs, cfg["nss"], progress=shown(progress, dist.is_main),
                              device=dist.device)
    else:  # a network without the NSS task needs no targets (nothing is computed)
        nss = np.zeros((len(pairs), 0), dtype=np.float32)
    if dist.is_main:
        dist.wait_for_main()
    return Plan(cfg, pairs, splits, record, nss, database_info(cfg["dataset"]["name"], pairs),
                chosen)


def first_line(cfg, dist, numerics) -> str:
    """The run's first log line: its profile, network, device, step and precision, and every
    deviation from the network's recipe."""
    t, device = cfg["train"], dist.device
    deviations = config_mod.deviations_from_paper(cfg)
    network = cfg["model"]["name"]
    same = ("the paper's protocol" if spec_of(cfg).recipe_published
            else f"the {network} recipe (docs/models.md)")
    fused = t["concurrent_splits"] == "fused"
    step = step_of(t["step"], device, dist.world)
    if fused:
        step += (", splits fused (rounds eager, not compiled; scoring compiled)" if step == "compile"
                 else ", splits fused")
    precision = ("bfloat16 autocast" if amp_dtype_of(cfg, device) else
                 "float32 with TF32" if numerics["tf32"] else "float32")
    line = (f"profile {t['profile']} on {cfg['dataset']['name']}, model {network}, device {device}, "
            f"step {step}, {precision}: " + ("; ".join(deviations) if deviations else same))
    line += recipe_plateau_note(cfg)
    if fused and device.type == "cpu":  # allowed, so that a CPU shows what a GPU would train
        line += ("; note: fused splits are slower than one after another on a CPU (0.65-0.85x "
                 "on a 2-core machine, benchmarks/fused_throughput.py): they are for a GPU")
    return line


# Measured on the small demo (docs/decisions.md#does-the-papers-recipe-learn): two runs of
# the paper's 500-epoch recipe with the original patch normalisation (seed 1 stopped after
# 336) learn, after about 100 epochs near a constant predictor (validation SROCC near 0.07;
# its 10-epoch mean first passes 0.1 at epochs 96 and 90, 0.2 at 114 and 136)
def recipe_plateau_note(cfg) -> str:
    """The first log line's note for the paper's network with the original patch
    normalisation: its recipe learns on the demo after a long plateau."""
    if cfg["model"]["name"] != "bourbia2021" or cfg["patches"]["normalisation"] != "reference":
        return ""
    return ("; note: with patches.normalisation=reference expect a long plateau near a constant "
            "predictor (about 100 epochs on the demo) before validation SROCC climbs; see "
            "docs/decisions.md#does-the-papers-recipe-learn")


def check_tested(cfg, splits):
    """UserError (one line), before any work, for several splits of which some have no test
    part: a split without a test is one final model on every pair (dataset.split [1, 0, 0]),
    and a run of several has no test to summarise."""
    if len(splits) > 1 and any(len(split["test"]) == 0 for split in splits):
        source = cfg["dataset"]["split_file"] or f"dataset.split={cfg['dataset']['split']}"
        raise UserError(f"{source} leaves the test part empty: that trains one final model "
                        f"(train.repeats=1), not {len(splits)} splits with no test to summarise")


def check_demo_size(cfg):
    """UserError (one line), before the demo is built, for a network whose crops do not fit
    the small demo's views (PAD-Net's 256x256)."""
    ds, spec = cfg["dataset"], spec_of(cfg)
    if ds["name"] == "demo" and ds["demo_size"] == "small" and spec.patch > min(DEMO_VIEW):
        raise UserError(f"model.name={cfg['model']['name']} cuts {spec.patch}x{spec.patch} crops, larger than "
                        f"the small demo's {DEMO_VIEW[0]}x{DEMO_VIEW[1]} views: use "
                        "dataset.demo_size=full (611x344 views)")


def check_model_inputs(cfg, pairs):
    """The config's network's spec; a UserError, before any work, where the database lacks
    what the network predicts."""
    spec = spec_of(cfg)
    if spec.needs_view_scores:
        missing = [p.name for p in pairs if p.view_scores is None]
        if missing:
            raise UserError(f"model.name={cfg['model']['name']} predicts per-view scores, but "
                            f"{len(missing)} pairs of dataset.name={cfg['dataset']['name']} have "
                            f"none (first: {missing[0]}); use a database that carries them "
                            "(the demo, Waterloo-IVC, a CSV manifest with left_score,right_score "
                            "columns)")
    return spec


def chosen_splits(cfg, count) -> list:
    """The split indices this run trains: `train.splits` (in its order), or all `count`;
    UserError (one line) for an index outside the run's splits."""
    chosen = cfg["train"]["splits"]
    if chosen is None:
        return list(range(count))
    outside = [r for r in chosen if r >= count]
    if outside:
        source = cfg["dataset"]["split_file"] or f"the {cfg['protocol']['design']} design"
        raise UserError(f"train.splits={chosen}: split {outside[0]} does not exist; {source} "
                        f"with train.repeats={cfg['train']['repeats']} gives splits 0..{count - 1}")
    return list(chosen)


def train_splits(plan, resume, dist, progress, log) -> list:
    """The test report of every split (None for those this process does not train); a
    finished split of a resumed run is read back, not trained again."""
    reports = [None] * len(plan.splits)
    todo = []
    epochs = plan.cfg["train"]["epochs"]
    for r in plan.chosen:
        split = plan.split_folder(r)
        if resume and split.finished(epochs, saved_epoch):
            reports[r] = json.loads(split.metrics.read_text())["test"]
        else:
            if resume:
                split.check_extendable(epochs)
            todo.append(r)
    mode = plan.cfg["train"]["concurrent_splits"] if len(todo) > 1 else False
    concurrent = bool(mode)

    def split_run(r):
        # several splits: each line says whose it is (concurrently they interleave, no bars)
        split_log = (lambda line: log(f"split {r}: {line}")) if len(plan.splits) > 1 else log
        return SplitRun(plan, r, dist, progress=shown(progress, not concurrent), log=split_log,
                        concurrent=concurrent)

    def steps(r):
        return split_run(r).steps(resume)

    if mode == "fused":
        fused = FusedRuns([split_run(r) for r in todo], progress=shown(progress, dist.is_main),
                          log=log)
        for r, report in zip(todo, finish(fused.steps(resume))):
            reports[r] = report
    elif concurrent:
        for r, report in zip(todo, interleave([steps(r) for r in todo], dist.device)):
            reports[r] = report
    else:
        for r in todo:
            reports[r] = finish(steps(r))
            release_freed_memory()  # the next split does not grow on this one's free blocks
    return reports


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


def finished(cfg) -> bool:
    """Every split this run trains (train.splits, or all) reached train.epochs and was
    tested, and a whole run of several splits wrote its summary (siqa.runfolder). The splits
    are counted in the run's own splits.json (k-fold: repeats x folds; a split file: its own
    count)."""
    folder = RunFolder(config_mod.run_dir_of(cfg))
    if not folder.splits_file.is_file():  # no split has started
        return False
    count = folder.split_count()
    chosen = [0] if count == 1 else chosen_splits(cfg, count)
    return folder.finished(chosen, count, cfg["train"]["epochs"], saved_epoch,
                           whole=cfg["train"]["splits"] is None)


def release_freed_memory():
    """Hand the memory freed by a finished split back to the system (glibc's malloc_trim).

    A split frees its patches, model and optimizer, but glibc keeps freed heap blocks, and
    once large blocks have been freed it raises its mmap threshold, so the next split's
    large tensors come from a heap whose holes they only partly fit: the peak grew by tens of
    MB a split without it (docs/performance.md). A no-op where there is no glibc."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class SplitRun:
    """Train, validate and test split `r` of `plan` (see the module docstring)."""

    def __init__(self, plan, r, dist, progress, log, concurrent=False):
        self.plan, self.r, self.dist, self.log, self.concurrent = plan, r, dist, log, concurrent
        self.cfg, self.t = plan.cfg, plan.cfg["train"]
        self.folder = plan.split_folder(r)
        self.run_dir = self.folder.path
        self.seed = self.t["seed"] + r
        self.show = shown(progress, dist.is_main)  # True (bars), Every(s) or False: siqa.progress
        self.pairs = {name: [plan.pairs[i] for i in plan.splits[r][name]] for name in PARTS}
        self.record = {**plan.record, "repeat": r, "started": time.perf_counter()}
        self.run_name = tensorboard_name(plan.out_dir) + ("" if len(plan.splits) == 1 else f"/{split_name(r)}")
        self.names = {name: [p.name for p in self.pairs[name]] for name in PARTS}
        self.identities = split_identities(self.pairs)  # evaluation recognises these pairs by content

    def steps(self, resume):
        """The split's run as a generator of its training steps; returns its test report."""
        self.prepare(resume)
        with self.training():
            for epoch in range(self.start_epoch, self.t["epochs"]):
                yield from self._epoch(epoch)
        return self.finish()

    @contextmanager
    def training(self):
        """While the epochs run: a signal stops the run after the current step, and a run
        stopped by an error still finishes writing its last checkpoints."""
        preempt.defer()
        try:
            yield
        except BaseException:  # Preempted here, or GeneratorExit: another split was preempted
            if self.boundary is not None and preempt.requested():  # the abandoned epoch's start
                self.pair.save_last(self.boundary)
            raise
        finally:
            preempt.undefer()
            self.saver.close()

    def finish(self) -> dict:
        """After the last epoch: the test report of the best-validation checkpoint."""
        if self.stop.agree():  # a signal during the last epoch's validation or checkpoint
            raise preempt.Preempted(preempt.requested())
        self.dist.barrier()  # best.pt is on disk before any rank reads it
        return self._test_best()

    # -- before the first epoch -------------------------------------------------------------
    def prepare(self, resume, fused=False):
        """Data, network, optimizer, the state of last.pt on --resume, the run's writers.
        `fused`: the steps are a FusedRuns' (siqa.training.fused), this split scores and
        checkpoints what it trains."""
        cfg, t, dist = self.cfg, self.t, self.dist
        self.spec = spec_of(cfg)
        self._build_data()
        if dist.is_main:  # every input has been read: from here on the run folder exists
            # the whole run's config (train.splits: null): array tasks sharing out_dir write
            # the same file, and --resume without train.splits finishes every split
            whole = {**cfg, "train": {**t, "splits": None}}
            atomic_write_text(self.plan.folder.config, config_mod.dump(whole))
            write_split_file(self.plan.folder.splits_file, self.record["splits"])
        self.amp_dtype = amp_dtype_of(cfg, dist.device)
        torch.manual_seed(self.seed)
        self.model = build_model(cfg, dist.device)  # the same initial weights on every rank
        load_init(self.model, cfg)
        if self.spec.normalisation == "standardise":  # the training split's statistics (StereoQA-Net)
            self.model.set_standardisation(*pixel_statistics(self.data["train"].left),
                                           *pixel_statistics(self.data["train"].right))
        seed_rank_stream(self.seed, dist.rank)  # then each rank its own dropout masks
        self.optimizer = make_optimizer(self.model, t)
        self.scheduler = (torch.optim.lr_scheduler.StepLR(self.optimizer, t["lr_step"], t["lr_gamma"])
                          if t["lr_step"] else None)
        self.start_epoch, self.best, self.resumes = 0, None, []
        if resume:
            self._resume()
        self.trained = self.model
        if dist.world > 1:
            self.trained = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        self.logbook = Logbook(cfg, self.run_name, self.start_epoch) if dist.is_main else None
        self.saver = BackgroundSaver()
        self.pair = BestLastPair(self.run_dir, self.saver)  # best.pt never newer than its last.pt
        self.batch = max(1, t["batch_size"] // dist.world)  # the global batch stays batch_size
        self.fused = None  # (FusedSplits, k) once a FusedRuns trains this split
        mode = step_of(t["step"], dist.device, dist.world)
        if fused:  # K captured scorers would hold K graph memory pools: graph scores eagerly
            self.scorer = Scorer("compile" if mode == "compile" else "eager", self.model, self.amp_dtype)
        else:
            self.step = TrainStep(mode, self.trained, self.optimizer, self.batch, t["nss_weight"],
                                  self.amp_dtype, concurrent=self.concurrent)
            self.scorer = self.step.scorer
        self.stop = preempt.Stopper(dist)
        # The state at the end of the last completed epoch when last.pt is older (checkpoint_every
        # > 1): what a preempted run writes to last.pt (kept only where a signal can stop the run).
        self.boundary = None

    def _build_data(self):
        """The split's patches and targets on the device; PAD-Net trains on one random crop
        of each pair an epoch, cut from the whole views."""
        cfg, plan, r = self.cfg, self.plan, self.r
        self.crop_views = (whole_views(self.pairs["train"], self.spec, self.show)
                           if self.spec.train_crop == "random" else None)
        dtype = getattr(torch, self.t["patch_dtype"])
        self.data = {name: split_data(self.pairs[name], plan.nss[plan.splits[r][name]], dtype,
                                      cfg["patches"]["normalisation"], self.spec, progress=self.show,
                                      crops=self.crop_views is not None and name == "train"
                                      ).to(self.dist.device)
                     for name in PARTS}

    def _resume(self):
        """Continue from last.pt: weights, optimizer, scheduler, best so far, RNG streams."""
        dist, run_dir = self.dist, self.run_dir
        if dist.is_main:
            reconcile_best(run_dir)
        dist.barrier()
        if not self.folder.last.is_file():
            return
        # On the CPU whatever the device: the RNG states must stay CPU byte tensors;
        # load_state_dict moves the weights and the optimizer state to the device.
        state = load_checkpoint(self.folder.last, map_location="cpu")
        if model_kwargs(self.cfg).get("nss_head") and "nss_head.weight" not in state["model"]:
            raise UserError(f"--resume: {self.folder.last} has no NSS head: it was written "
                            f"before train.nss_weight had an effect on model.name={self.cfg['model']['name']} "
                            "(its recorded value was ignored); evaluate.py reads it, but a resume "
                            "would train another network: retrain")
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.best = state["epoch"], state["best"]
        self.resumes = list(state.get("resumes", [])) + [
            {"after_epoch": self.start_epoch, "changed": self.record["changes"]}]
        if not restore_rank_rng(state["rng"], dist, self.seed, self.start_epoch):
            self.log(f"note: {run_dir} was written by {len(rank_states(state['rng']))} process(es), "
                     f"this run has {dist.world}: dropout streams restart (the resume is not exact)")
        self.log(f"resuming {run_dir} after epoch {self.start_epoch}")

    # -- one epoch ------------------------------------------------------------------------------
    def _epoch(self, epoch):
        """Train one epoch (yielding after every step), then validate, log and checkpoint."""
        started, t = time.perf_counter(), self.t
        order = self.order(epoch)
        whose = f"split {self.r}: " if len(self.plan.splits) > 1 else ""
        bar = progress_bar(total=len(order), desc=f"{whose}epoch {epoch + 1}/{t['epochs']}",
                           unit="patch", leave=False, progress=first_epoch(self.show, epoch, self.start_epoch))
        losses = yield from preempt.until_stopped(
            epoch_steps(self.trained, self.optimizer, self.data["train"], order, self.batch,
                        t["nss_weight"], self.amp_dtype, progress=bar, step=self.step), self.stop)
        bar.close()
        self.end_epoch(epoch, losses, started)

    def order(self, epoch):
        """The epoch's patch order on the device (PAD-Net: after drawing the epoch's crops)."""
        data = self.data["train"]
        if self.crop_views is not None:  # in place: a captured CUDA graph reads the same memory
            fill_random_crops(data, self.crop_views, self.spec.patch, self.seed, epoch)
        order = epoch_order(data.num_patches, self.seed, epoch, self.dist.rank, self.dist.world)
        return order.to(self.dist.device)

    def end_epoch(self, epoch, losses, started):
        """After an epoch's steps: the learning rate's schedule, validation, the logs, last.pt."""
        t = self.t
        last_epoch = epoch + 1 == t["epochs"]
        lr = float(self.optimizer.param_groups[0]["lr"])  # a tensor under train.step=graph
        if self.scheduler is not None:
            self.scheduler.step()
        line = (f"epoch {epoch + 1}/{t['epochs']} loss {losses['total']:.4f} "
                f"(quality {losses['quality']:.4f}, nss {losses['nss']:.4f})")
        if (epoch + 1) % t["val_every"] == 0 or last_epoch:
            line += self._validate(epoch + 1, last_epoch)
        if self.logbook is not None:
            self.logbook.epoch(losses, lr, epoch + 1)
        self._checkpoint(epoch + 1, last_epoch)
        if self.dist.is_main:
            self.log(line + f" [{time.perf_counter() - started:.1f}s]")
        self.dist.barrier()

    def _validate(self, epoch, last_epoch) -> str:
        """Score the validation split; keep best.pt on a better SROCC; the log line's part.
        Without a validation part (dataset.split [1, 0, 0], a final fit) nothing is selected:
        best.pt is the last epoch."""
        if not self.pairs["val"]:
            if last_epoch:  # its spread on the training pairs, as siqa.load warns of it
                train = {"spread": spread_of(self._predict("train"), self.plan.info)}
                self.best = {"epoch": epoch, "val": None, "train": train}
                if self.dist.is_main:
                    self.pair.save_best(self._state(epoch, with_optimizer=False))
            return selection.NO_VALIDATION_LOG
        pred = predict_pairs(self.model, self.data["val"], amp_dtype=self.amp_dtype, scorer=self.scorer)
        val = validation_report(pred, self.pairs["val"], self.plan.info)  # and the spread
        if selection.better(val, self.best):
            self.best = {"epoch": epoch, "val": val}
            if self.dist.is_main:
                self.pair.save_best(self._state(epoch, with_optimizer=False))
        if self.logbook is not None:
            self.logbook.validation(val, epoch)
            # numbered by epoch, so that a resumed run draws the same ones
            if (epoch // self.t["val_every"]) % self.t["scatter_every"] == 0 or last_epoch:
                self.logbook.scatter(pred, self.pairs["val"], epoch)
        return f" | val SROCC {fmt_metric(val['srocc'])} PLCC {fmt_metric(val['plcc'])} RMSE {val['rmse']:.3f}"

    def _checkpoint(self, epoch, last_epoch):
        """last.pt every train.checkpoint_every epochs (and after the last); in between, where a
        signal can stop the run, the epoch's state is kept in memory for a preempted run."""
        dist = self.dist
        if epoch % self.t["checkpoint_every"] == 0 or last_epoch:
            rng = self.rng_states()
            if dist.is_main:
                self.pair.save_last(dict(self._state(epoch, with_optimizer=True), rng=rng))
            self.boundary = None
        elif preempt.installed():
            rng = self.rng_states()
            if dist.is_main:
                self.boundary = cpu_copy(dict(self._state(epoch, with_optimizer=True), rng=rng))

    def rng_states(self) -> list:
        """Every rank's own random streams (a collective), as last.pt holds them; a fused
        split's: its own generator's."""
        if self.fused is None:
            return self.dist.gather(rng_state(self.dist.device))
        fused, k = self.fused
        return [{**rng_state(self.dist.device), **fused.rng_state(k)}]

    def optimizer_state(self) -> dict:
        """The optimizer's state_dict (a fused split's: its rows of the fused optimizer, at
        this split's scheduled learning rate)."""
        if self.fused is None:
            return self.optimizer.state_dict()
        fused, k = self.fused
        state = fused.optimizer_state(k)
        for group, own in zip(state["param_groups"], self.optimizer.param_groups):
            group.update({key: own[key] for key in ("lr", "initial_lr") if key in own})
        return state

    def _state(self, epoch, with_optimizer):
        state = {"model": self.model.state_dict(), "epoch": epoch, "best": self.best,
                 "config": self.cfg, "split": self.names, "pair_sha256": self.identities,
                 "database": self.plan.info,
                 "resumes": self.resumes}
        if with_optimizer:
            state.update(optimizer=self.optimizer_state(),
                         scheduler=self.scheduler.state_dict() if self.scheduler else None)
        return state

    # -- after the last epoch -------------------------------------------------------------------
    def _test_best(self) -> dict:
        """Test the checkpoint with the best validation SROCC (model selection on validation
        only); write predictions.csv and metrics.json."""
        best_state = load_checkpoint(self.folder.best, map_location="cpu")
        self.model.load_state_dict(best_state["model"])
        report = {"val": best_state["best"]["val"], "best_epoch": best_state["best"]["epoch"],
                  "epochs": self.t["epochs"]}
        test_pred = self._predict("test")
        report["test"] = score_report(self.pairs["test"], test_pred, self.plan.info) if self.pairs["test"] else None
        if report["test"] is None:  # a final fit: the spread of its predictions on its training pairs
            report["train"] = best_state["best"].get("train") or {
                "spread": spread_of(self._predict("train"), self.plan.info)}
        report["pairs"] = {name: len(self.pairs[name]) for name in PARTS}
        report["scenes"] = {name: len({p.content for p in self.pairs[name]}) for name in PARTS}
        if self.dist.is_main:
            self._write_test(report, test_pred)
        return report["test"]

    def _predict(self, part) -> np.ndarray:
        """The scores of a part of the split (none where dataset.split gives it no scene)."""
        if not self.pairs[part]:
            return np.zeros(0)
        return predict_pairs(self.model, self.data[part], amp_dtype=self.amp_dtype, scorer=self.scorer)

    def _write_test(self, report, test_pred):
        val_pred = self._predict("val")
        split_of = {p.name: name for name in ("val", "test") for p in self.pairs[name]}
        csv_text = predictions_csv(self.pairs["val"] + self.pairs["test"],
                                   np.concatenate([val_pred, test_pred]), split_of)
        atomic_write_text(self.folder.predictions, csv_text)
        report["protocol"] = protocol.card(self.cfg, self.record["split_info"], self.dist.device,
                                           self.record["started"], [report["test"]],
                                           repeat=self.r, code=self.record["code"])
        report["protocol"]["resumes"] = self.resumes  # each resume: its epoch and changes
        if not self.pairs["val"]:
            report["protocol"]["selection"] = selection.NO_VALIDATION_RULE
        write_json(self.folder.metrics, report)
        if not self.t["keep_last"]:  # tested: --resume now knows the split from metrics.json
            self.folder.last.unlink(missing_ok=True)
        self.logbook.close(report)
        if report["test"] is None:  # a final fit: every pair trained (or validated) on
            self.log(f"no test split: {BEST} is epoch {report['best_epoch']}, trained on "
                     f"{report['pairs']['train']} pairs")
            for line in near_constant_lines(report):  # training (and validation) predictions
                self.log(line)
            return
        for line in split_log_lines(report):  # and a warning where the predictions are near constant
            self.log(line)


def first_epoch(progress, epoch, start_epoch):
    """An epoch's progress: bars on a terminal for every epoch; plain lines (a log file) only
    in the first epoch this process trains, after which each epoch's own line says it lives."""
    return shown(progress, not isinstance(progress, Every) or epoch == start_epoch)


def check_fusable(cfg):
    """UserError (one line), before any work, for a network the fused splits cannot train
    (siqa.training.fused: its forward must run under torch.func.vmap): the probe of
    FusedSplits on one network built on the CPU, under a forked RNG (no random state moves)."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, torch.device("cpu"))
        FusedSplits.from_train_config([model], [torch.Generator()], cfg["train"])


class FusedRuns:
    """The splits of `runs` (SplitRuns of one plan) trained as one fused network
    (train.concurrent_splits=fused, siqa.training.fused): each split prepares, validates,
    checkpoints and tests as it does alone; the epochs' steps are FusedSplits' rounds.

        each split: prepare (data, network, optimizer, last.pt on --resume), then its random
                    stream handed to its own generator
        FusedSplits(the K networks, the K generators; captured rounds on CUDA), the splits'
                    training patches concatenated once; on --resume their optimizer states
        per epoch:  K orders -> the fused rounds (one vmapped step per batch size)
                    -> split k: its weights into its network, then its own end of the epoch
    """

    def __init__(self, runs, progress, log):
        self.runs, self.progress, self.log = runs, progress, log
        self.cfg, self.t, self.device = runs[0].cfg, runs[0].t, runs[0].dist.device

    def steps(self, resume):
        """The fused run as a generator of its rounds; returns the splits' test reports."""
        generators = []
        for run in self.runs:  # each one's stream, where its run alone would be now
            run.prepare(resume, fused=True)
            generators.append(self._generator())
        starts = {run.start_epoch for run in self.runs}
        if len(starts) > 1:
            raise UserError(f"--resume with train.concurrent_splits=fused: the splits stopped at "
                            f"different epochs ({sorted(starts)}); resume them one after another "
                            "(train.concurrent_splits=false)")
        first = self.runs[0]
        self.fused = FusedSplits.from_train_config(
            [run.model for run in self.runs], generators, self.t, first.amp_dtype,
            initial_lr=first.optimizer.param_groups[0].get("initial_lr"),
            step=fused_step(step_of(self.t["step"], self.device, first.dist.world)), log=self.log)
        views = self.fused.concatenate([run.data["train"] for run in self.runs])
        for k, run in enumerate(self.runs):
            run.data["train"] = views[k]  # one copy of the training patches, the concatenated one
            if run.start_epoch:
                self.fused.load_split_state(k, optimizer=run.optimizer.state_dict())
            run.fused = (self.fused, k)
        with ExitStack() as stack:
            for run in self.runs:
                stack.enter_context(run.training())
            for epoch in range(starts.pop(), self.t["epochs"]):
                yield from self._epoch(epoch)
        return [run.finish() for run in self.runs]

    def _generator(self):
        """A generator holding the process's current random state on the run's device."""
        if self.device.type == "cuda":
            return torch.Generator(self.device).set_state(torch.cuda.get_rng_state(self.device))
        return torch.Generator().set_state(torch.get_rng_state())

    def _epoch(self, epoch):
        started, runs = time.perf_counter(), self.runs
        orders = [run.order(epoch) for run in runs]
        self.fused.set_lr(float(runs[0].optimizer.param_groups[0]["lr"]))  # one schedule for all
        bar = progress_bar(total=sum(len(o) for o in orders), unit="patch", leave=False,
                           desc=f"epoch {epoch + 1}/{self.t['epochs']}, {len(runs)} splits fused",
                           progress=first_epoch(self.progress, epoch, runs[0].start_epoch))
        rounds = self.fused.epoch([run.data["train"] for run in runs], orders, runs[0].batch, bar)
        try:
            losses = yield from preempt.until_stopped(rounds, runs[0].stop)
        except torch.cuda.OutOfMemoryError as err:
            raise UserError(out_of_memory(err, len(runs), runs[0].batch)) from None
        bar.close()
        for k, run in enumerate(runs):
            self.fused.load_into(k, run.model)  # what split k scores and checkpoints
            run.end_epoch(epoch, losses[k], started)


def out_of_memory(err, splits, batch) -> str:
    """The one line of a fused run that did not fit on its GPU."""
    asked = re.search(r"Tried to allocate [0-9.]+ [KMGT]?i?B", str(err))
    return (f"train.concurrent_splits=fused: out of GPU memory training {splits} splits at once at "
            f"train.batch_size={batch} ({asked.group(0) if asked else 'CUDA out of memory'}); the "
            "run folder holds every completed epoch: --resume with fewer splits at once "
            "(train.splits=[...] in several jobs) or train.concurrent_splits=false")
