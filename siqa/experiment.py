"""A whole training run and a whole evaluation, from the config to the files they write.

train: database -> content splits -> NSS targets -> resident patches -> epochs
(train, validate, checkpoint) -> test of the best-validation checkpoint -> reports.
Everything the user can get wrong is checked before the run folder is created.
"""
import json
import os
import queue
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from siqa import config as config_mod
from siqa.checkpoint import load_checkpoint, map_tensors, restore_rng, rng_state, save_checkpoint
from siqa import preempt, protocol
from siqa.data import load_database
from siqa.data.demo import VIEW_SIZE as DEMO_VIEW
from siqa.data.splits import read_split_file, splits_for_run, write_split_file
from siqa.data.nss import nss_from_config
from siqa.data.patches import (PatchSet, crop_generator, extract_patch_set, pixel_statistics,
                               random_crops, view_patch_set, whole_views)
from siqa.distributed import Dist, configure_numerics, configure_run_numerics
from siqa.concurrent import finish, interleave
from siqa.engine import SplitData, TrainStep, check_step_mode, epoch_order, epoch_steps, predict_pairs
from siqa.errors import UserError
from siqa.files import atomic_write_text
from siqa.metrics import evaluate_scores
from siqa.models import MODELS, create_model, model_kwargs, name_of, spec_of
from siqa.models.bourbia2021 import MultiTaskSIQA
from siqa.overlap import evaluation_pairs, split_identities
from siqa.reports import pooled_out_of_fold, predictions_csv, score_report, summarize, write_json


def make_optimizer(model, t):
    """train.optimizer over the network's parameters, or over its own parameter groups where
    it has them (`param_groups(lr)`: PAD-Net's per-group learning rates)."""
    params = model.param_groups(t["lr"]) if hasattr(model, "param_groups") else model.parameters()
    if t["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=t["lr"], weight_decay=t["weight_decay"])
    return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"],
                           weight_decay=t["weight_decay"])


def database_info(cfg, pairs) -> dict:
    scores = [p.score for p in pairs]
    return {
        "name": cfg["dataset"]["name"],
        "higher_is_better": bool(pairs[0].higher_is_better),
        "score_min": float(min(scores)),
        "score_max": float(max(scores)),
    }


def describe_scale(info) -> str:
    kind = "MOS, higher = better" if info["higher_is_better"] else "DMOS, higher = worse"
    return (f"scores on the scale of the {info['name']} database ({kind}; "
            f"its scores span {info['score_min']:.4g} .. {info['score_max']:.4g})")


def load_pairs(cfg):
    ds = cfg["dataset"]
    return load_database(ds["name"], root=ds["root"], manifest=ds["manifest"],
                         demo_size=ds["demo_size"])


PATCH_C = {"reference": 1.0, "contrast": 1.0 / 255}  # C of (p - mean) / (std + C) on [0, 1]


def split_data(pairs, nss, dtype, normalisation, progress=True, spec=MultiTaskSIQA.spec,
               crops=False) -> SplitData:
    """The patches and targets of `pairs` that a network with `spec` consumes
    (siqa/models/spec.py); the paper's network: locally normalised grey patches. `crops`:
    room for one crop of each pair, which `fill_random_crops` draws anew every epoch."""
    if crops:
        n, c, size = len(pairs), spec.channels, spec.patch
        patches = PatchSet(left=torch.zeros(n, c, size, size, dtype=dtype),
                           right=torch.zeros(n, c, size, size, dtype=dtype),
                           pair_index=torch.arange(n, dtype=torch.int64))
    elif spec.normalisation == "local":
        patches = extract_patch_set(pairs, progress=progress, dtype=dtype, c=PATCH_C[normalisation])
    else:
        patches = view_patch_set(pairs, spec, progress=progress, dtype=dtype)
    views = None
    if spec.needs_view_scores:
        views = torch.tensor([p.view_scores for p in pairs], dtype=torch.float32)
    return SplitData(
        left=patches.left,
        right=patches.right,
        pair_index=patches.pair_index,
        score=torch.tensor([p.score for p in pairs], dtype=torch.float32),
        nss=torch.as_tensor(np.asarray(nss), dtype=torch.float32),
        views=views,
    )


def fill_random_crops(data: SplitData, views, size, seed, epoch):
    """Epoch `epoch`'s random crops (siqa.data.patches.random_crops) of the training views,
    written into `data`'s patch tensors: the same crops on every rank and after a resume."""
    left, right = random_crops(views, size, crop_generator(seed, epoch), data.left.dtype)
    data.left.copy_(left)
    data.right.copy_(right)


def check_demo_size(cfg):
    """UserError (one line), before the demo is built, for a network whose crops do not fit
    the small demo's views (PAD-Net's 256x256)."""
    ds, spec = cfg["dataset"], spec_of(cfg)
    if ds["name"] == "demo" and ds.get("demo_size", "small") == "small" and spec.patch > min(DEMO_VIEW):
        raise UserError(f"model.name={name_of(cfg)} cuts {spec.patch}x{spec.patch} crops, larger than "
                        f"the small demo's {DEMO_VIEW[0]}x{DEMO_VIEW[1]} views: use "
                        "dataset.demo_size=full (611x344 views)")


def check_model_inputs(cfg, pairs):
    """The config's network's spec; a UserError, before any work, where the database lacks
    what the network predicts."""
    spec = spec_of(cfg)
    init = (cfg.get("model") or {}).get("init")
    if init and not hasattr(MODELS[name_of(cfg)], "load_pretrained"):
        raise UserError(f"model.init: model.name={name_of(cfg)} has no pre-trained part")
    if init and not Path(init).is_file():
        raise UserError(f"model.init: file not found: {init}")
    if spec.needs_view_scores:
        missing = [p.name for p in pairs if p.view_scores is None]
        if missing:
            raise UserError(f"model.name={name_of(cfg)} predicts per-view scores, but "
                            f"{len(missing)} pairs of dataset.name={cfg['dataset']['name']} have "
                            f"none (first: {missing[0]}); use a database that carries them "
                            "(the demo, Waterloo-IVC, a CSV manifest with left_score,right_score "
                            "columns)")
    return spec


def amp_dtype_of(cfg, device):
    return torch.bfloat16 if cfg["train"]["amp"] and device.type == "cuda" else None


def _pick(pairs, indices):
    return [pairs[i] for i in indices]


def tensorboard_name(out_dir) -> str:
    """A run's TensorBoard folder: the last component of out_dir and 8 hex digits of its
    absolute path, so that runs/a/exp and runs/b/exp do not write into one folder, and a
    resumed run (from any working directory) writes into its own."""
    import hashlib

    path = str(Path(out_dir).resolve())
    return f"{Path(path).name}-{hashlib.sha256(path.encode('utf-8')).hexdigest()[:8]}"


def _tensorboard(cfg, run_name, purge_step):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(cfg["tensorboard"]["dir"]) / run_name), purge_step=purge_step)


def _scatter_to_tensorboard(writer, tag, pred, pairs, epoch, title):
    from siqa.plots import figure_to_array, scatter_figure

    fig = scatter_figure(pred, [p.score for p in pairs], [p.distortion for p in pairs], title=title)
    writer.add_image(tag, figure_to_array(fig), epoch, dataformats="HWC")
    import matplotlib.pyplot as plt

    plt.close(fig)


def _better(val, best):
    srocc = val.get("srocc")
    return best is None or (srocc is not None and (best["val"].get("srocc") is None
                                                   or srocc > best["val"]["srocc"]))


def _finished(run_dir, epochs):
    """A split whose run reached `epochs` and was tested (resume skips it)."""
    return ((run_dir / "metrics.json").is_file() and (run_dir / "last.pt").is_file()
            and load_checkpoint(run_dir / "last.pt")["epoch"] >= epochs)


def finished(cfg) -> bool:
    """Every split this run trains (train.splits, or all) reached train.epochs and was
    tested, and a whole run of several splits wrote its summary. The splits are counted in
    the run's own splits.json: k-fold gives repeats x folds, a split file its own count
    (not train.repeats, which left a k-fold run's later folds untrained)."""
    cfg = config_mod.resolve_auto(cfg)
    out_dir, epochs = config_mod.run_dir_of(cfg), cfg["train"]["epochs"]
    if not (out_dir / "splits.json").is_file():  # no split has started
        return False
    count = len(read_split_file(out_dir / "splits.json")["splits"])
    if count == 1:
        return _finished(out_dir, epochs)
    whole = cfg["train"]["splits"] is None
    return (all(_finished(out_dir / f"split_{r}", epochs) for r in chosen_splits(cfg, count))
            and (not whole or (out_dir / "summary.json").is_file()))


def train(cfg, resume=False, dist=Dist(), progress=True, log=print, changes=None):
    """Train (and test) on every configured split; returns the test report(s).
    `changes`: {key: [recorded, now]} of a resume's allowed changes (siqa.config.RESUME_FREE),
    kept with the run's checkpoints and protocol card."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    cfg = config_mod.resolve_auto(cfg)
    out_dir = config_mod.run_dir_of(cfg)
    check_step_mode(cfg["train"]["step"], dist.device, dist.world)  # before any work
    config_mod.check_nss_weight(cfg)  # a network without an NSS output or head
    spec = spec_of(cfg)  # with the `nss` output where the network carries its NSS head
    if cfg["train"]["concurrent_repeats"] and dist.world > 1:
        raise UserError("train.concurrent_repeats=true is for one process; under torchrun "
                        "the repeats run one after another (train.concurrent_repeats=false)")
    configure_numerics(cfg["train"]["deterministic"], cfg["train"]["tf32"], dist.device)
    deviations = config_mod.deviations_from_paper(cfg)
    network = name_of(cfg)  # named unless it is the default, whose line is as it always was
    log(f"profile {cfg['train']['profile']} on {cfg['dataset']['name']}"
        + ("" if network == "bourbia2021" else f", model {network}") + f", device {dist.device}: "
        + ("; ".join(deviations) if deviations else "the paper's protocol" if network ==
           "bourbia2021" else f"the {network} recipe (siqa/config.py RECIPES)"))
    # Rank 0 builds the demo database and fills the NSS cache; the other ranks then read them
    # (a long wait: on the host group, whose timeout fits a cold cache of a large database).
    check_demo_size(cfg)
    if not dist.is_main:
        dist.wait_for_main()
    pairs = load_pairs(cfg)
    splits, split_doc = splits_for_run(pairs, cfg)  # seeded, or dataset.split_file
    chosen = chosen_splits(cfg, len(splits))  # train.splits: an array task's share
    record = {"splits": split_doc, "split_info": protocol.split_info(cfg, split_doc),
              "code": protocol.git_state(), "changes": changes or {}}
    check_model_inputs(cfg, pairs)
    if spec.predicts_nss:
        nss = nss_from_config(pairs, cfg["nss"], progress=progress and dist.is_main,
                              device=dist.device)  # the device itself: cuda:1 computes on cuda:1
    else:  # a network without the NSS task needs no targets (nothing is computed)
        nss = np.zeros((len(pairs), 0), dtype=np.float32)
    if dist.is_main:
        dist.wait_for_main()
    info = database_info(cfg, pairs)
    dtype = getattr(torch, cfg["train"]["patch_dtype"])
    concurrent = cfg["train"]["concurrent_repeats"] and len(chosen) > 1

    def run_dir_of(r):
        return out_dir if len(splits) == 1 else out_dir / f"split_{r}"

    def run_of(r):  # split r's run: a generator of its training steps, returning its report
        run_name = tensorboard_name(out_dir) + ("" if len(splits) == 1 else f"/split_{r}")
        data = {name: _pick(pairs, splits[r][name]) for name in ("train", "val", "test")}
        targets = {name: nss[splits[r][name]] for name in data}
        # several splits: each line says whose it is (concurrently they interleave, no bars)
        split_log = (lambda line: log(f"split {r}: {line}")) if len(splits) > 1 else log
        return split_run(cfg, data, targets, info, run_dir_of(r), run_name, dtype,
                         seed=cfg["train"]["seed"] + r, resume=resume, dist=dist,
                         progress=progress and not concurrent, log=split_log, tqdm=tqdm,
                         record={**record, "repeat": r, "started": time.perf_counter()},
                         concurrent=concurrent)

    reports = [None] * len(splits)
    todo = []
    for r in chosen:
        if resume and _finished(run_dir_of(r), cfg["train"]["epochs"]):
            reports[r] = json.loads((run_dir_of(r) / "metrics.json").read_text())["test"]
        else:
            todo.append(r)
    if concurrent:
        for r, report in zip(todo, interleave([run_of(r) for r in todo], dist.device)):
            reports[r] = report
    else:
        for r in todo:
            reports[r] = finish(run_of(r))
            release_freed_memory()  # the next split does not grow on this one's free blocks
    if cfg["train"]["splits"] is not None:  # a part of the run: summarize.py merges the parts
        if dist.is_main:
            log(f"split(s) {', '.join(map(str, chosen))} of {len(splits)} trained; once every "
                f"split is, merge them: python summarize.py {out_dir}")
        return [reports[r] for r in chosen]
    if len(splits) > 1 and dist.is_main:
        card = protocol.card(cfg, record["split_info"], dist.device, started, reports,
                             code=record["code"])
        summary = {**summarize(reports), "protocol": card}
        if split_doc.get("folds"):  # k-fold: out-of-fold predictions pooled per repetition
            summary["pooled"] = pooled_out_of_fold(
                pairs, [run_dir_of(r) / "predictions.csv" for r in range(len(splits))],
                split_doc["folds"])
            for rep in summary["pooled"]["repetitions"]:
                log(f"pooled out-of-fold, repetition {rep['repetition']} ({rep['pairs']} pairs, "
                    f"{rep['scenes']} scenes): SROCC {_fmt(rep['srocc'])} PLCC {_fmt(rep['plcc'])} "
                    f"KROCC {_fmt(rep['krocc'])} RMSE {rep['rmse']:.3f}")
        write_json(out_dir / "summary.json", summary)
    return reports


def chosen_splits(cfg, count) -> list:
    """The split indices this run trains: `train.splits` (in its order), or all `count`;
    UserError (one line) for an index outside the run's splits."""
    chosen = cfg["train"]["splits"]
    if chosen is None:
        return list(range(count))
    outside = [r for r in chosen if r >= count]
    if outside:
        source = cfg["dataset"].get("split_file") or f"the {cfg['protocol']['design']} design"
        raise UserError(f"train.splits={chosen}: split {outside[0]} does not exist; {source} "
                        f"with train.repeats={cfg['train']['repeats']} gives splits 0..{count - 1}")
    return list(chosen)


def release_freed_memory():
    """Hand the memory freed by a finished split back to the system (glibc's malloc_trim).

    A split frees its patches, model and optimizer, but glibc keeps freed heap blocks, and
    once large blocks have been freed it raises its mmap threshold, so the next split's
    large tensors come from a heap whose holes they only partly fit: the peak grew by tens of
    MB a split without it (docs/performance.md). A no-op where there is no glibc."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def split_run(cfg, pairs, targets, info, run_dir, run_name, dtype, seed, resume, dist,
              progress, log, tqdm, record=None, concurrent=False):
    """Train, validate and test one split: a generator that yields after every training
    step (siqa.concurrent runs several at once, `concurrent`) and returns the split's test
    report."""
    t = cfg["train"]
    device = dist.device
    show = progress and dist.is_main
    spec = spec_of(cfg)
    # PAD-Net trains on one random crop of each pair an epoch, cut from the whole views
    crop_views = whole_views(pairs["train"], spec, show) if spec.train_crop == "random" else None
    data = {name: split_data(pairs[name], targets[name], dtype, cfg["patches"]["normalisation"],
                             progress=show, spec=spec,
                             crops=crop_views is not None and name == "train").to(device)
            for name in pairs}
    if dist.is_main:  # every input has been read: from here on the run folder exists
        # the whole run's config (train.splits: null): array tasks sharing out_dir write the
        # same file, and --resume without train.splits finishes every split
        whole = {**cfg, "train": {**cfg["train"], "splits": None}}
        atomic_write_text(config_mod.run_dir_of(cfg) / "config.yaml", config_mod.dump(whole))
        if record is not None:
            write_split_file(config_mod.run_dir_of(cfg) / "splits.json", record["splits"])
    amp_dtype = amp_dtype_of(cfg, device)
    epochs = cfg["train"]["epochs"]

    torch.manual_seed(seed)
    model = build_model(cfg, device)  # the same initial weights on every rank
    load_init(model, cfg)
    if spec.normalisation == "standardise":  # the training split's statistics (StereoQA-Net)
        model.set_standardisation(*pixel_statistics(data["train"].left),
                                  *pixel_statistics(data["train"].right))
    seed_rank_stream(seed, dist.rank)  # then each rank its own dropout masks
    optimizer = make_optimizer(model, t)
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, t["lr_step"], t["lr_gamma"])
                 if t["lr_step"] else None)
    split_names = {name: [p.name for p in pairs[name]] for name in pairs}
    split_sha = split_identities(pairs)  # evaluation recognises these pairs by content
    start_epoch, best, resumes = 0, None, []
    if resume:
        if dist.is_main:
            reconcile_best(run_dir)
        dist.barrier()
    if resume and (run_dir / "last.pt").is_file():
        # On the CPU whatever the device: the RNG states must stay CPU byte tensors;
        # load_state_dict moves the weights and the optimizer state to the device.
        state = load_checkpoint(run_dir / "last.pt", map_location="cpu")
        if model_kwargs(cfg).get("nss_head") and "nss_head.weight" not in state["model"]:
            raise UserError(f"--resume: {run_dir / 'last.pt'} has no NSS head: it was written "
                            f"before train.nss_weight had an effect on model.name={name_of(cfg)} "
                            "(its recorded value was ignored); evaluate.py reads it, but a resume "
                            "would train another network: retrain")
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"], state["best"]
        resumes = list(state.get("resumes", [])) + [
            {"after_epoch": start_epoch, "changed": (record or {}).get("changes", {})}]
        if not restore_rank_rng(state["rng"], dist, seed, start_epoch):
            log(f"note: {run_dir} was written by {len(rank_states(state['rng']))} process(es), "
                f"this run has {dist.world}: dropout streams restart (the resume is not exact)")
        log(f"resuming {run_dir} after epoch {start_epoch}")
    trained = model
    if dist.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def state_dict(epoch, with_optimizer):
        state = {"model": model.state_dict(), "epoch": epoch, "best": best, "config": cfg,
                 "split": split_names, "pair_sha256": split_sha, "database": info,
                 "resumes": resumes}
        if with_optimizer:
            state.update(optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict() if scheduler else None)
        return state

    writer = _tensorboard(cfg, run_name, start_epoch + 1) if dist.is_main else None
    saver = BackgroundSaver()
    val_scores = np.array([p.score for p in pairs["val"]])
    batch = max(1, t["batch_size"] // dist.world)  # the global batch stays batch_size
    step = TrainStep(t["step"], trained, optimizer, batch, t["nss_weight"], amp_dtype,
                     concurrent=concurrent)
    stop = preempt.Stopper(dist)
    # The state at the end of the last completed epoch when last.pt is older (checkpoint_every
    # > 1): what a preempted run writes to last.pt (kept only where a signal can stop the run).
    boundary = None
    pair = BestLastPair(run_dir, saver)  # best.pt never newer than the last.pt a resume reads
    preempt.defer()  # while training, a signal stops the run after the current step
    try:  # a run stopped by an error still finishes writing its last checkpoints
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            last_epoch = epoch + 1 == epochs
            if crop_views is not None:  # in place: a captured CUDA graph reads the same memory
                fill_random_crops(data["train"], crop_views, spec.patch, seed, epoch)
            order = epoch_order(data["train"].num_patches, seed, epoch, dist.rank, dist.world)
            bar = tqdm(total=len(order), desc=f"epoch {epoch + 1}/{epochs}", unit="patch",
                       leave=False, disable=not show)
            losses = yield from preempt.until_stopped(
                epoch_steps(trained, optimizer, data["train"], order.to(device), batch,
                            t["nss_weight"], amp_dtype, progress=bar, step=step), stop)
            bar.close()
            lr = float(optimizer.param_groups[0]["lr"])  # a tensor under train.step=graph
            if scheduler is not None:
                scheduler.step()
            line = (f"epoch {epoch + 1}/{epochs} loss {losses['total']:.4f} "
                    f"(quality {losses['quality']:.4f}, nss {losses['nss']:.4f})")
            if (epoch + 1) % t["val_every"] == 0 or last_epoch:
                pred = predict_pairs(model, data["val"], amp_dtype=amp_dtype, scorer=step.scorer)
                val = evaluate_scores(pred, val_scores)
                if _better(val, best):
                    best = {"epoch": epoch + 1, "val": val}
                    if dist.is_main:
                        pair.save_best(state_dict(epoch + 1, False))
                line += f" | val SROCC {_fmt(val['srocc'])} PLCC {_fmt(val['plcc'])} RMSE {val['rmse']:.3f}"
                if writer is not None:
                    for key in ("srocc", "plcc", "rmse", "plcc_logistic"):
                        if val.get(key) is not None:
                            writer.add_scalar(f"val/{key}", val[key], epoch + 1)
                    # numbered by epoch, so that a resumed run draws the same ones
                    if ((epoch + 1) // t["val_every"]) % t["scatter_every"] == 0 or last_epoch:
                        _scatter_to_tensorboard(writer, "val/scatter", pred, pairs["val"], epoch + 1,
                                                f"validation, epoch {epoch + 1}")
            if writer is not None:
                for key, value in losses.items():
                    writer.add_scalar(f"train/loss_{key}", value, epoch + 1)
                writer.add_scalar("train/lr", lr, epoch + 1)
                writer.flush()
            if (epoch + 1) % t["checkpoint_every"] == 0 or last_epoch:
                rng = dist.gather(rng_state(device))  # every rank's own streams (a collective)
                if dist.is_main:
                    pair.save_last(dict(state_dict(epoch + 1, True), rng=rng))
                boundary = None
            elif preempt.installed():
                rng = dist.gather(rng_state(device))
                if dist.is_main:
                    boundary = cpu_copy(dict(state_dict(epoch + 1, True), rng=rng))
            if dist.is_main:
                log(line + f" [{time.perf_counter() - started:.1f}s]")
            dist.barrier()
    except BaseException:  # Preempted here, or GeneratorExit: another split was preempted
        if boundary is not None and preempt.requested():  # the abandoned epoch's start
            pair.save_last(boundary)
        raise
    finally:
        preempt.undefer()
        saver.close()
    if stop.agree():  # a signal during the last epoch's validation or checkpoint
        raise preempt.Preempted(preempt.requested())
    dist.barrier()  # best.pt is on disk before any rank reads it

    # Test the checkpoint with the best validation SROCC (model selection on validation only).
    best_state = load_checkpoint(run_dir / "best.pt", map_location="cpu")
    model.load_state_dict(best_state["model"])
    report = {"val": best_state["best"]["val"], "best_epoch": best_state["best"]["epoch"],
              "epochs": epochs}
    test_pred = predict_pairs(model, data["test"], amp_dtype=amp_dtype, scorer=step.scorer)
    report["test"] = score_report(pairs["test"], test_pred)
    report["pairs"] = {name: len(pairs[name]) for name in pairs}
    report["scenes"] = {name: len({p.content for p in pairs[name]}) for name in pairs}
    if dist.is_main:
        val_pred = predict_pairs(model, data["val"], amp_dtype=amp_dtype, scorer=step.scorer)
        split_of = {p.name: name for name in ("val", "test") for p in pairs[name]}
        csv_text = predictions_csv(pairs["val"] + pairs["test"],
                                   np.concatenate([val_pred, test_pred]), split_of)
        atomic_write_text(run_dir / "predictions.csv", csv_text)
        if record is not None:
            report["protocol"] = protocol.card(cfg, record["split_info"], device, record["started"],
                                               [report["test"]], repeat=record["repeat"],
                                               code=record["code"])
            report["protocol"]["resumes"] = resumes  # each resume: its epoch and changes
        write_json(run_dir / "metrics.json", report)
        _hparams(writer, cfg, report)
        writer.close()
        test = report["test"]
        log(f"test ({report['pairs']['test']} pairs, {report['scenes']['test']} scenes, "
            f"best epoch {report['best_epoch']}): SROCC {_fmt(test['srocc'])} "
            f"PLCC {_fmt(test['plcc'])} KROCC {_fmt(test['krocc'])} RMSE {test['rmse']:.3f}")
    return report["test"]


# How a step runs its optimizer, not what the optimizer is: train.step=graph sets these (and
# makes the learning rate a device tensor), and a checkpoint of such a run stores them.
STEP_MODE_OPTIONS = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer, saved):
    """optimizer.load_state_dict(saved), keeping how this run's steps execute.

    load_state_dict replaces every group option with the saved one, so a checkpoint of a
    train.step=graph run would make a resumed eager run keep the fused SGD kernel, Adam's
    capturable path and a tensor learning rate. The saved hyper-parameters and state stay
    (the learning rate as a float, with its scheduled value); the execution options are
    this optimizer's own, and a graph step re-applies its own when it is built."""
    own = [{k: g[k] for k in STEP_MODE_OPTIONS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, options in zip(optimizer.param_groups, own):
        group.update(options)
        if torch.is_tensor(group["lr"]):
            group["lr"] = float(group["lr"])
        if not group.get("capturable") and not group.get("fused"):
            for p in group["params"]:  # a capturable Adam's step counters live on the device
                state = optimizer.state.get(p, {})
                if torch.is_tensor(state.get("step")) and state["step"].device.type != "cpu":
                    state["step"] = state["step"].to("cpu", torch.float32)


def seed_rank_stream(seed, rank):
    """Give this rank its own random stream once the model is initialised (identically on
    every rank, from `seed`): rank 0 continues the initialisation's stream, so a single
    process trains exactly as before DDP support; rank r > 0 is reseeded from (seed, r), so
    the ranks draw different dropout masks (with one seed they all drew the same)."""
    if rank:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def rank_states(saved):
    """The per-rank list of RNG states of a checkpoint (an older one holds one dict)."""
    return [saved] if isinstance(saved, dict) else list(saved)


def restore_rank_rng(saved, dist, seed, epoch) -> bool:
    """Restore this rank's own RNG state from a checkpoint; False (and a fresh stream
    seeded by seed, epoch and rank) when it was written by another number of processes."""
    states = rank_states(saved)
    if len(states) == dist.world:
        restore_rng(states[dist.rank], dist.device)
        return True
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, dist.rank]).generate_state(1)[0]))
    return False


def cpu_copy(state):
    """`state` with every tensor copied (detached) to the CPU."""
    return map_tensors(state, lambda x: x.detach().to("cpu", copy=True))


BEST_BACKUP = ".best-at-last.pt"  # best.pt as it was when last.pt was written


class BestLastPair:
    """Writes best.pt and last.pt (through `saver`, in order) so that a resume always finds
    the best.pt that goes with its last.pt.

    With train.checkpoint_every > 1 (or a kill between the two writes of an epoch) best.pt
    can be written after the last.pt a resume starts from. So before best.pt is first
    replaced after a last.pt, the old one is kept as a hard link `.best-at-last.pt`, which is
    removed once the next last.pt is on disk. `reconcile_best` at resume puts it back when
    last.pt did not follow:

        last.pt(k) ... best.pt(j > k) [link: best.pt(b <= k)] ... last.pt(m >= j) [unlink]
    """

    def __init__(self, run_dir, saver):
        self.run_dir, self.saver = Path(run_dir), saver
        self.backed_up = False

    def save_best(self, state):
        if not self.backed_up:
            self.saver.call(_backup_best, self.run_dir)
            self.backed_up = True
        self.saver.save(self.run_dir / "best.pt", state)

    def save_last(self, state):
        self.saver.save(self.run_dir / "last.pt", state)
        self.saver.call(_unlink, self.run_dir / BEST_BACKUP)
        self.backed_up = False


def _backup_best(run_dir):
    best, backup = run_dir / "best.pt", run_dir / BEST_BACKUP
    _unlink(backup)
    if best.is_file():
        try:
            os.link(best, backup)
        except OSError:  # a file system without hard links
            shutil.copyfile(best, backup)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def reconcile_best(run_dir):
    """Before resuming: make best.pt the one that goes with last.pt (see BestLastPair).
    Returns what was done: None, "restored" (the older best.pt put back) or "removed" (a
    best.pt newer than a last.pt without any best, or without a last.pt: the resumed run
    writes it again)."""
    run_dir = Path(run_dir)
    best, backup, last = run_dir / "best.pt", run_dir / BEST_BACKUP, run_dir / "last.pt"
    last_best = load_checkpoint(last)["best"] if last.is_file() else None
    best_epoch = load_checkpoint(best)["epoch"] if best.is_file() else None
    done = None
    if last_best is not None and best_epoch != last_best["epoch"] and backup.is_file():
        os.replace(backup, best)
        done = "restored"
    elif last_best is None and best_epoch is not None:
        _unlink(best)
        done = "removed"
    _unlink(backup)
    return done


class BackgroundSaver:
    """Checkpoints written off the critical path: the state is copied to the CPU at once (so
    it is the state at this epoch's end), then hashed and written atomically by one thread,
    in order, while the next epoch trains (at most two copies wait: the memory stays bounded).
    A failed write is raised at the next `save` or at `wait`."""

    def __init__(self):
        self._queue = queue.Queue(maxsize=2)
        self._error = None
        self._thread = None

    def save(self, path, state):
        # detached copies on the CPU: training goes on changing the live tensors
        self.call(save_checkpoint, path, cpu_copy(state))

    def call(self, fn, *args):
        """Run fn(*args) on the writer thread, after the writes queued before it."""
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def _run(self):
        while True:
            fn, args = self._queue.get()
            if fn is None:  # close(): the thread ends (its malloc arena is then reused)
                self._queue.task_done()
                return
            try:
                if self._error is None:
                    fn(*args)
            except BaseException as err:  # handed to the training thread
                self._error = err
            finally:
                # Not held while waiting for the next task: the thread lives on after its
                # run, and a snapshot left here kept each finished split's last.pt state
                # (weights and optimizer, ~116 MB) alive for the rest of the process.
                fn = args = None
                self._queue.task_done()

    def _raise(self):
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def wait(self):
        """Return once every queued checkpoint is on disk."""
        self._queue.join()
        self._raise()

    def close(self):
        """wait(), then end the writer thread (a later save starts another)."""
        try:
            self.wait()
        finally:
            if self._thread is not None:
                self._queue.put((None, ()))
                self._thread.join()
                self._thread = None


def _fmt(x):
    return "n/a" if x is None else f"{x:.4f}"


def _hparams(writer, cfg, report):
    flat = config_mod.flatten(cfg)
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}
    metrics = {f"hparam/test_{k}": report["test"][k] for k in ("srocc", "plcc", "krocc", "rmse")
               if report["test"].get(k) is not None}
    writer.add_hparams(hparams, metrics, run_name=".")


def evaluate(checkpoint, overrides=(), split="test", out=None, progress=True, log=print):
    """Score a database with a checkpoint; write metrics.json, predictions.csv, scatter.png."""
    started = time.perf_counter()
    state = load_checkpoint(checkpoint, required=("model", "config", "split", "database"))
    cfg = config_mod.load_config(overrides=overrides, base=state["config"])
    config_mod.check_effect(cfg, overrides)  # no key without an effect
    cfg["patches"] = state["config"]["patches"]  # the model only knows its own input normalisation
    from siqa.distributed import use_run_threads
    from siqa.engine import select_device

    device = select_device(cfg["device"])
    with use_run_threads(cfg):  # the caller's thread count is back afterwards
        pairs = load_pairs(cfg)
        # which pairs the checkpoint trained, validated and tested on: by content (siqa.overlap)
        chosen = evaluation_pairs(pairs, state, split)
        if split == "test" and chosen.split != "test":
            log(f"note: not the checkpoint's database (its test split is not in it): "
                f"evaluating {chosen.describe()}")
        pairs, split = chosen.pairs, chosen.split.replace(" ", "_")
        if not pairs:
            raise UserError("every pair of this database is a training or validation pair of the "
                            "checkpoint: nothing to evaluate")
        model = load_model(state, device, source=checkpoint)
        pred = predict_database(model, pairs, cfg, device, progress=progress)
        report = score_report(pairs, pred)
        from siqa.matrix import oriented  # MOS against DMOS, as --matrix: 1 means agreement

        report["oriented"] = oriented(pred, pairs, state["database"]["higher_is_better"])
        out = Path(out) if out else Path(checkpoint).parent / f"eval_{cfg['dataset']['name']}_{split}"
        write_json(out / "metrics.json", {split: report, "evaluated": chosen.describe(),
                                          "dropped_seen_pairs": chosen.dropped,
                                          "protocol": protocol.evaluation_card(
                                              cfg, checkpoint, device, started, report, pairs)})
        atomic_write_text(out / "predictions.csv", predictions_csv(pairs, pred))
        from siqa.plots import save_scatter_png

        save_scatter_png(out / "scatter.png", pred, [p.score for p in pairs],
                         [p.distortion for p in pairs],
                         title=f"{cfg['dataset']['name']} ({split}, {len(pairs)} pairs)")
        log(f"{split}: {len(pairs)} pairs, SROCC {_fmt(report['srocc'])} PLCC {_fmt(report['plcc'])} "
            f"KROCC {_fmt(report['krocc'])} RMSE {report['rmse']:.3f} -> {out}")
        if report["oriented"]["flipped"]:
            log(f"note: the checkpoint predicts {'MOS' if state['database']['higher_is_better'] else 'DMOS'}"
                f", the database gives the other: oriented SROCC {_fmt(report['oriented']['srocc'])} "
                f"PLCC {_fmt(report['oriented']['plcc'])} (metrics.json: oriented)")
        return report, out


def predict_database(model, pairs, cfg, device, progress=True):
    """Image-level predictions of `model` for `pairs`, with the patches the config asks for."""
    spec = model.spec
    if spec.needs_view_scores:  # the per-view targets are not used to score
        pairs = [p if p.view_scores else replace(p, view_scores=(0.0, 0.0)) for p in pairs]
    data = split_data(pairs, np.zeros((len(pairs), getattr(model, "nss_dim", 0))),
                      getattr(torch, cfg["train"]["patch_dtype"]), cfg["patches"]["normalisation"],
                      progress=progress, spec=spec).to(device)
    return predict_pairs(model, data, amp_dtype=amp_dtype_of(cfg, device))


def build_model(cfg, device):
    """The network in the memory layout the run trained it in (evaluation must use the same
    layout to reproduce the run's numbers bit for bit)."""
    # no model.name (older runs): bourbia2021; train.nss_weight > 0: multiscore's and
    # stereoqanet's NSS head (siqa.models.nss_head_of)
    model = create_model(name_of(cfg), **model_kwargs(cfg)).to(device)
    if cfg["train"].get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model


def load_init(model, cfg):
    """model.init: pre-trained weights of part of the network (PAD-Net's auto-encoder)."""
    path = (cfg.get("model") or {}).get("init")
    if not path:
        return
    if not hasattr(model, "load_pretrained"):
        raise UserError(f"model.init: model.name={name_of(cfg)} has no pre-trained part")
    if not Path(path).is_file():
        raise UserError(f"model.init: file not found: {path}")
    try:
        model.load_pretrained(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError) as err:
        raise UserError(f"model.init: {path} does not fit model.name={name_of(cfg)} "
                        f"({str(err).splitlines()[0][:200]})") from None


def load_model(state, device, source="the checkpoint"):
    """The checkpoint's network on `device`, in evaluation mode, with the numerics its run
    trained under (siqa.distributed.configure_run_numerics: evaluate.py, the matrix and
    siqa.load all come through here)."""
    configure_run_numerics(state["config"], device)
    cfg = state["config"]
    if (model_kwargs(cfg).get("nss_head") and isinstance(state.get("model"), dict)
            and "nss_head.weight" not in state["model"]):
        # written before the NSS head existed: its train.nss_weight (25.0 then) was ignored
        cfg = {**cfg, "train": {**cfg["train"], "nss_weight": 0.0}}
    model = build_model(cfg, device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else repr(err))[:200]
        raise UserError(f"checkpoint {source} does not fit this model ({detail}); it was written "
                        "by another model version: retrain, or use a matching checkpoint") from None
    return model.eval()
