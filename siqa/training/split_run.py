"""One split of a run: train, validate and test it, writing its folder's files.

    prepare   resident patches (PAD-Net: whole views, a random crop an epoch) -> the network,
              optimizer and schedule (or last.pt's state on --resume) -> the run's writers
    epochs    train (yielding after every step) -> validate: best.pt by the best-epoch rule
              (siqa.evaluation.selection) -> log -> last.pt (siqa.training.checkpoints)
    finish    test best.pt once -> predictions.csv, metrics.json (with the protocol card)

A split's run is a generator that yields after every training step, so that
siqa.training.concurrent can interleave the steps of several splits; one after another,
`finish` (siqa.training.concurrent) runs it to its end. Fused with others
(siqa.training.fused_runs), it prepares, validates, checkpoints and tests as it does alone.
"""
import time
from contextlib import contextmanager

import numpy as np
import torch

from siqa import config as config_mod
from siqa.build import amp_dtype_of, build_model, load_init, model_kwargs, spec_of
from siqa.checkpoint import load_checkpoint, rng_state
from siqa.data.inputs import fill_random_crops, split_data
from siqa.data.overlap import split_identities
from siqa.data.patches import pixel_statistics, whole_views
from siqa.data.splits import write_split_file
from siqa.errors import UserError
from siqa.evaluation import protocol, selection
from siqa.evaluation.reports import (
    fmt_metric,
    near_constant_lines,
    predictions_csv,
    score_report,
    split_log_lines,
    spread_of,
    validation_report,
    write_json,
)
from siqa.files import atomic_write_text
from siqa.progress import Every, shown
from siqa.progress import bar as progress_bar
from siqa.runfolder import BEST, split_name
from siqa.scoring import Scorer, predict_pairs
from siqa.settings import Settings
from siqa.training import preempt
from siqa.training.checkpoints import (
    BackgroundSaver,
    BestLastPair,
    cpu_copy,
    rank_states,
    reconcile_best,
    restore_rank_rng,
    seed_rank_stream,
)
from siqa.training.logbook import Logbook, tensorboard_name
from siqa.training.step import (
    TrainStep,
    epoch_order,
    epoch_steps,
    load_optimizer_state,
    make_optimizer,
    step_of,
)

PARTS = ("train", "val", "test")


class SplitRun:
    """Train, validate and test split `r` of `plan` (see the module docstring)."""

    def __init__(self, plan, r, dist, progress, log, concurrent=False):
        self.plan, self.r, self.dist, self.log, self.concurrent = plan, r, dist, log, concurrent
        self.cfg, self.t = plan.cfg, Settings(plan.cfg).train
        self.folder = plan.split_folder(r)
        self.run_dir = self.folder.path
        self.seed = self.t.seed + r
        self.show = shown(progress, dist.is_main)  # True (bars), Every(s) or False: siqa.progress
        self.pairs = {name: [plan.pairs[i] for i in plan.splits[r][name]] for name in PARTS}
        self.record = {**plan.record, "split": r, "started": time.perf_counter()}
        self.run_name = tensorboard_name(plan.out_dir) + ("" if len(plan.splits) == 1 else f"/{split_name(r)}")
        self.names = {name: [p.name for p in self.pairs[name]] for name in PARTS}
        self.identities = split_identities(self.pairs)  # evaluation recognises these pairs by content

    def steps(self, resume):
        """The split's run as a generator of its training steps; returns its test report."""
        self.prepare(resume)
        with self.training():
            for epoch in range(self.start_epoch, self.t.epochs):
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
            whole = {**cfg, "train": {**cfg["train"], "splits": None}}
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
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = (torch.optim.lr_scheduler.StepLR(self.optimizer, t.lr_step, t.lr_gamma)
                          if t.lr_step else None)
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
        self.batch = max(1, t.batch_size // dist.world)  # the global batch stays batch_size
        self.fused = None  # (FusedSplits, k) once a FusedRuns trains this split
        mode = step_of(t.step, dist.device, dist.world)
        if fused:  # K captured scorers would hold K graph memory pools: graph scores eagerly
            self.scorer = Scorer("compile" if mode == "compile" else "eager", self.model, self.amp_dtype)
        else:
            self.step = TrainStep(mode, self.trained, self.optimizer, self.batch, t.nss_weight,
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
        dtype, normalisation = getattr(torch, self.t.patch_dtype), Settings(cfg).patches.normalisation
        self.data = {name: split_data(self.pairs[name], plan.nss[plan.splits[r][name]], dtype,
                                      normalisation, self.spec, progress=self.show,
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
                            f"before train.nss_weight had an effect on model.name={Settings(self.cfg).model.name} "
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
        bar = progress_bar(total=len(order), desc=f"{whose}epoch {epoch + 1}/{t.epochs}",
                           unit="patch", leave=False, progress=first_epoch(self.show, epoch, self.start_epoch))
        losses = yield from preempt.until_stopped(
            epoch_steps(self.trained, self.optimizer, self.data["train"], order, self.batch,
                        t.nss_weight, self.amp_dtype, progress=bar, step=self.step), self.stop)
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
        last_epoch = epoch + 1 == t.epochs
        lr = float(self.optimizer.param_groups[0]["lr"])  # a tensor under train.step=graph
        if self.scheduler is not None:
            self.scheduler.step()
        line = (f"epoch {epoch + 1}/{t.epochs} loss {losses['total']:.4f} "
                f"(quality {losses['quality']:.4f}, nss {losses['nss']:.4f})")
        if (epoch + 1) % t.val_every == 0 or last_epoch:
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
            if (epoch // self.t.val_every) % self.t.scatter_every == 0 or last_epoch:
                self.logbook.scatter(pred, self.pairs["val"], epoch)
        return f" | val SROCC {fmt_metric(val['srocc'])} PLCC {fmt_metric(val['plcc'])} RMSE {val['rmse']:.3f}"

    def _checkpoint(self, epoch, last_epoch):
        """last.pt every train.checkpoint_every epochs (and after the last); in between, where a
        signal can stop the run, the epoch's state is kept in memory for a preempted run."""
        dist = self.dist
        if epoch % self.t.checkpoint_every == 0 or last_epoch:
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
                  "epochs": self.t.epochs}
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
                                           split=self.r, code=self.record["code"])
        report["protocol"]["resumes"] = self.resumes  # each resume: its epoch and changes
        if not self.pairs["val"]:
            report["protocol"]["selection"] = selection.NO_VALIDATION_RULE
        write_json(self.folder.metrics, report)
        if not self.t.keep_last:  # tested: --resume now knows the split from metrics.json
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
