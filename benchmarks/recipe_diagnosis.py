"""Why the paper's recipe starts slowly with the original patch normalisation: measurements.

Trains the paper's network with the paper's optimizer on the small demo (default split:
dataset.split_seed 0, the first 60/20/20 content split; seed 0) under a few variants and
records, per epoch, what the network and its gradients do (docs/recipe-diagnosis.md):

    reference        the paper's recipe: SGD 1e-3, momentum 0.9, weight decay 1e-4, batch
                     128, L1(quality) + 25 L1(NSS), patches (p - mean) / (std + 1) on [0, 1]
    contrast         the same with C = 1/255 (local contrast normalisation)
    and controls, each ONE change from `reference`:
    ref_nss0         train.nss_weight 0
    ref_scaled       the reference patches multiplied by one constant, the ratio of the
                     contrast patches' std to the reference patches' std (train split)
    ref_lr10         lr 1e-2
    ref_qbias        quality_out.bias initialised to the mean training score (a diagnostic,
                     not a recipe: it skips the phase where every L1 residual has one sign)
    contrast_nss0    `contrast` with train.nss_weight 0

Training is the package's: the recipe of `train.profile=paper` (siqa.config), its optimizer
(siqa.training.step.make_optimizer) and its steps (epoch_steps: the epoch order, the joint
loss, zero_grad / backward / step), the model built right after torch.manual_seed(seed)
(channels_last, as train.channels_last); validation scores are siqa.scoring's pair means and
the correlations siqa.evaluation.metrics'. The script only watches: a forward hook records
each step's quality outputs, an optimizer pre-step hook its gradient norms, and every probe
runs under torch.random.fork_rng, so no probe changes the dropout masks of training: the
trajectory is the one `python train.py train.profile=paper train.threads=1 train.epochs=N
...` follows (the script prints its epoch-1 losses for comparing with such a run's log).

Per epoch: the two loss terms; the training batches' mean prediction and the fraction of
L1 residuals with prediction < target; validation SROCC / PLCC, the spread (std) of the
validation pair scores against the targets' std, the SROCC a dropout-on scoring gives (the
original scored with dropout on); training-pair SROCC; per parameter tensor the mean
gradient norm over the epoch's steps, the weight norm and ||w_end - w_start|| / ||w_start||;
on a fixed probe batch (128 training patch pairs, one fixed dropout mask) the gradient norm
of L1(quality) and of w * L1(nss) separately and the weight-decay term's norm. At epochs 0
(init), 1, 2, 5, 10 and the last: per conv / linear layer the RMS of its output on the probe
batch (eval mode), the RMS of its weight part against its bias, and the fraction of dead
units where a ReLU follows (a channel / feature never positive on the probe batch).

    python benchmarks/recipe_diagnosis.py run --variants reference contrast --epochs 15
    python benchmarks/recipe_diagnosis.py report          # Markdown tables + combined JSON

Outputs: runs/recipe_diagnosis/<variant>.json per variant, runs/recipe_diagnosis/
diagnosis.json (all of them, with the input statistics and the init bounds). One CPU thread.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siqa.config import load_config  # noqa: E402
from siqa.data import content_splits, load_database  # noqa: E402
from siqa.data.inputs import PATCH_C, SplitData  # noqa: E402
from siqa.data.nss import nss_from_config  # noqa: E402
from siqa.data.patches import extract_patch_set  # noqa: E402
from siqa.evaluation.metrics import plcc, srocc  # noqa: E402
from siqa.models import create_model  # noqa: E402
from siqa.scoring import Scorer, pair_means, predict_pairs, run_batches  # noqa: E402
from siqa.settings import Settings  # noqa: E402
from siqa.training.concurrent import finish  # noqa: E402
from siqa.training.step import epoch_order, epoch_steps, make_optimizer  # noqa: E402

OUT = ROOT / "runs" / "recipe_diagnosis"
C = {norm: PATCH_C[norm] for norm in ("reference", "contrast")}  # C of (p - mean) / (std + C)
PAPER = ["model.name=bourbia2021", "train.profile=paper"]  # the recipe as train.py resolves it
VARIANTS = {  # the patches' normalisation, and the settings or the diagnostic changed
    "reference": {"norm": "reference"},
    "contrast": {"norm": "contrast"},
    "ref_nss0": {"norm": "reference", "overrides": ["train.nss_weight=0"]},
    "ref_scaled": {"norm": "reference", "scale": "match_contrast"},
    "ref_lr10": {"norm": "reference", "overrides": ["train.lr=1e-2"]},
    "ref_qbias": {"norm": "reference", "qbias": "train_mean"},
    "contrast_nss0": {"norm": "contrast", "overrides": ["train.nss_weight=0"]},
}
PROBE_SEED = 1234  # the probe batch and its dropout mask
DEVICE = torch.device("cpu")  # `run --device`; the project's paper runs on the demo: the CPU


def _rng_devices():
    return [DEVICE.index or 0] if DEVICE.type == "cuda" else []
# layers whose output goes through a ReLU (dead units are counted there)
RELU_AFTER = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc.fc2", "nss_fc1", "quality_fc1")


# ------------------------------------------------------------------------------ data
def load_data(split_seed=0, demo_size="small", with_nss=True, device="cpu"):
    pairs = load_database("demo", demo_size=demo_size)
    split = content_splits(pairs, ratios=(0.6, 0.2, 0.2), seed=split_seed, repeats=1)[0]
    settings = Settings(load_config(overrides=[f"nss.cache_dir={ROOT / 'data' / 'cache'}", "nss.workers=1"]))
    nss = (nss_from_config(pairs, settings, progress=False, device=str(device)) if with_nss
           else np.zeros((len(pairs), 108)))
    out = {}
    for name in ("train", "val"):
        chosen = [pairs[i] for i in split[name]]
        out[name] = {
            "pairs": chosen,
            "score": torch.tensor([p.score for p in chosen], dtype=torch.float32),
            "nss": torch.as_tensor(np.asarray(nss[split[name]]), dtype=torch.float32),
            "patches": {},
        }
        for norm, c in C.items():
            ps = extract_patch_set(chosen, progress=False, dtype=torch.float32, c=c)
            out[name]["patches"][norm] = (ps.left, ps.right)
            out[name]["pair_index"] = ps.pair_index
    return out


def input_stats(data):
    rows = {}
    for norm in C:
        left, right = data["train"]["patches"][norm]
        x = torch.cat([left, right]).double()
        per_patch_rms = x.pow(2).mean(dim=(1, 2, 3)).sqrt()
        rows[norm] = {"mean": x.mean().item(), "std": x.std().item(), "min": x.min().item(),
                      "max": x.max().item(), "abs_p99": x.abs().flatten().quantile(0.99).item()
                      if x.numel() < 16_000_000 else None,
                      "patch_rms_median": per_patch_rms.median().item(),
                      "patch_rms_p10": per_patch_rms.quantile(0.1).item(),
                      "patch_rms_p90": per_patch_rms.quantile(0.9).item()}
    rows["scale_match_contrast"] = rows["contrast"]["std"] / rows["reference"]["std"]
    rows["energy"] = energy_table(data)
    return rows


def energy_table(data):
    """SROCC between a pair's input RMS (its normalised patches, both views) and its score,
    per split and normalisation, overall and per distortion type (pristine pairs counted
    with every type): how far an 'energy detector' ranks the pairs."""
    out = {}
    for name in ("train", "val"):
        split = data[name]
        score = split["score"].numpy().astype(np.float64)
        kinds = np.array([p.distortion for p in split["pairs"]])
        for norm in C:
            e = pair_energy(split, norm)
            row = {"all": srocc(e, score)}
            for kind in sorted(set(kinds) - {"pristine"}):
                chosen = (kinds == kind) | (kinds == "pristine")
                row[kind] = srocc(e[chosen], score[chosen])
            out[f"{name}/{norm}"] = row
    return out


def pair_energy(split, norm, scale=1.0):
    """Per pair: RMS of its (normalised, scaled) patches over both views."""
    left, right = split["patches"][norm]
    rms = (torch.cat([left, right], 1) * scale).pow(2).mean(dim=(1, 2, 3))
    n = split["score"].shape[0]
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, split["pair_index"], rms.double())
    counts = torch.bincount(split["pair_index"], minlength=n).double()
    return (sums / counts).sqrt().numpy()


def init_bounds():
    """Init bounds of every layer: PyTorch 0.4.0's reset_parameters (weight and bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels * kh * kw or in_features)
    against today's (kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in);
    bias U(-1/sqrt(fan_in), ...)), and the largest |value| a fresh model actually has."""
    torch.manual_seed(0)
    model = create_model("bourbia2021")
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = m.weight[0].numel()
            old = 1 / math.sqrt(fan_in)
            new_w = math.sqrt(2 / (1 + 5)) * math.sqrt(3 / fan_in)
            rows.append({"layer": name, "fan_in": fan_in, "pytorch04_weight": old,
                         "pytorch04_bias": old, "today_weight": new_w,
                         "today_bias": 1 / math.sqrt(fan_in),
                         "max_abs_weight_now": m.weight.abs().max().item(),
                         "max_abs_bias_now": m.bias.abs().max().item()})
    return rows


# ------------------------------------------------------------------------------ probes
def layers_of(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


@torch.no_grad()
def activation_probe(model, left, right):
    """Per conv / linear layer on the probe batch (eval mode): output RMS, RMS of the weight
    part (output - bias) over RMS of the bias, dead fraction where a ReLU follows."""
    records, hooks = {}, []

    def hook(name, module):
        def fn(_, __, out):
            bias = module.bias.view(1, -1, *([1] * (out.dim() - 2)))
            signal = out - bias
            units = out.transpose(0, 1).reshape(out.shape[1], -1)  # (units, samples x positions)
            records[name] = {
                "rms": out.pow(2).mean().sqrt().item(),
                "signal_rms": signal.pow(2).mean().sqrt().item(),
                "bias_rms": module.bias.pow(2).mean().sqrt().item(),
                "dead": ((units <= 0).all(dim=1).float().mean().item()
                         if name.endswith(RELU_AFTER) else None),
                "zero_after_relu": ((units <= 0).float().mean().item()
                                    if name.endswith(RELU_AFTER) else None),
                # units whose ReLU state depends on the input: positive on 5..95% of the
                # probe batch's samples x positions (the others act as a constant or as
                # a linear map: the input never crosses their threshold)
                "switching": ((((units > 0).float().mean(dim=1) - 0.5).abs() < 0.45).float().mean().item()
                              if name.endswith(RELU_AFTER) else None),
            }
        return fn

    for name, m in layers_of(model):
        hooks.append(m.register_forward_hook(hook(name, m)))
    was = model.training
    model.eval()
    model(left, right)
    model.train(was)
    for h in hooks:
        h.remove()
    return records


def gradient_probe(model, left, right, score, nss, weight_decay):
    """Per parameter: ||grad L1(quality)||, ||grad L1(nss)|| (unweighted) on the probe batch
    with one fixed dropout mask (train mode, RNG forked), and ||weight_decay * w||."""
    params = dict(model.named_parameters())
    was = model.training
    model.train()
    with torch.random.fork_rng(devices=_rng_devices()):
        torch.manual_seed(PROBE_SEED)
        quality, nss_out = model(left, right)
    model.train(was)
    loss_q = F.l1_loss(quality.float(), score)
    loss_n = F.l1_loss(nss_out.float(), nss)
    g_q = torch.autograd.grad(loss_q, list(params.values()), retain_graph=True, allow_unused=True)
    g_n = torch.autograd.grad(loss_n, list(params.values()), allow_unused=True)
    out = {}
    for (name, p), a, b in zip(params.items(), g_q, g_n):
        out[name] = {"grad_q": 0.0 if a is None else a.norm().item(),
                     "grad_nss_unweighted": 0.0 if b is None else b.norm().item(),
                     "decay": weight_decay * p.detach().norm().item()}
    return out


def predict(model, data, dropout_seed=None, batch_size=128):
    """Pair scores: siqa.scoring.predict_pairs (eval mode), or, when dropout_seed is set, its
    pair means with dropout on in batches of `batch_size` (the original's scoring), under a
    forked RNG."""
    if dropout_seed is None:
        return predict_pairs(model, data)
    was = model.training
    model.train()
    with torch.no_grad(), torch.random.fork_rng(devices=_rng_devices()):
        torch.manual_seed(dropout_seed)
        [((quality,), _)] = list(run_batches(Scorer("eager", model), [(data.left, data.right, None)],
                                             batch_size, DEVICE))
    model.train(was)
    return pair_means(quality, data.pair_index, data.num_pairs)


def on_device(split, norm, scale):
    """One split's patches of normalisation `norm` (times `scale`) with its targets, on DEVICE."""
    left, right = (t * scale if scale != 1.0 else t for t in split["patches"][norm])
    return SplitData(*(t.to(DEVICE) for t in (left, right, split["pair_index"], split["score"], split["nss"])))


class StepWatch:
    """What the package's steps do, seen from outside: the quality outputs of each training
    forward (a forward hook) and the gradient norms each optimizer step applies (a pre-step
    hook). Neither changes a value the step computes."""

    def __init__(self, model, optimizer, params):
        self.params = params
        self.outputs, self.grad_sums, self.steps = [], torch.zeros(len(params), dtype=torch.float64, device=DEVICE), 0
        self.hooks = [model.register_forward_hook(lambda _, __, out: self.outputs.append(out[0].detach())),
                      optimizer.register_step_pre_hook(lambda *_: self._gradients())]

    @torch.no_grad()
    def _gradients(self):
        self.grad_sums += torch.stack(torch._foreach_norm([p.grad for p in self.params])).double()
        self.steps += 1

    def remove(self):
        for hook in self.hooks:
            hook.remove()


# ------------------------------------------------------------------------------ training
def run_variant(name, data, epochs, seed, scale_match, light=False, log=print):
    variant = VARIANTS[name]
    cfg = load_config(overrides=PAPER + variant.get("overrides", []))
    t = Settings(cfg).train
    norm = variant["norm"]
    scale = scale_match if variant.get("scale") == "match_contrast" else 1.0
    train, val = on_device(data["train"], norm, scale), on_device(data["val"], norm, scale)
    val_score = data["val"]["score"].numpy().astype(np.float64)
    train_score = data["train"]["score"].numpy().astype(np.float64)
    val_energy = pair_energy(data["val"], norm, scale)
    target_mean = float(train.score[train.pair_index].mean())

    probe_idx = torch.randperm(train.num_patches, generator=torch.Generator().manual_seed(PROBE_SEED))[:128].to(DEVICE)
    probe_pairs = train.pair_index[probe_idx]
    probe = (train.left[probe_idx], train.right[probe_idx], train.score[probe_pairs], train.nss[probe_pairs])

    torch.manual_seed(seed)  # as split_run: the model right after the seed, then the optimizer
    model = create_model("bourbia2021").to(DEVICE, memory_format=torch.channels_last)
    if variant.get("qbias") == "train_mean":
        with torch.no_grad():
            model.quality_out.bias.fill_(target_mean)
    optimizer = make_optimizer(model, cfg)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    probe_epochs = sorted({0, 1, 2, 5, 10, epochs} & set(range(epochs + 1)))

    def evaluate(epoch):
        scores = predict(model, val)
        out = {"val_srocc": srocc(scores, val_score), "val_plcc": plcc(scores, val_score),
               "val_pred_std": float(scores.std()), "val_pred_mean": float(scores.mean()),
               "val_target_std": float(val_score.std()), "val_target_mean": float(val_score.mean()),
               "val_srocc_vs_input_rms": srocc(scores, val_energy),
               "val_srocc_dropout_on": None, "train_srocc": None}
        if light and epoch not in probe_epochs:  # the two extra scorings: probe epochs only
            return out
        val_do = predict(model, val, dropout_seed=10_000 + epoch, batch_size=t.batch_size)
        train_pred = predict(model, train)
        return {**out, "val_srocc_dropout_on": srocc(val_do, val_score),
                "train_srocc": srocc(train_pred, train_score),
                "train_pred_std": float(train_pred.std()), "train_target_std": float(train_score.std())}

    history = []
    record = {"epoch": 0, **evaluate(0),
              "grad_probe": gradient_probe(model, *probe, t.weight_decay),
              "activations": activation_probe(model, probe[0], probe[1]),
              "weight_norm": {n: p.detach().norm().item() for n, p in zip(names, params)}}
    history.append(record)
    started = time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = epoch_order(train.num_patches, seed, epoch).to(DEVICE)
        before = [p.detach().clone() for p in params]
        watch = StepWatch(model, optimizer, params)
        losses = finish(epoch_steps(model, optimizer, train, order, t.batch_size, t.nss_weight))
        watch.remove()
        train_time = time.perf_counter() - t0
        quality, targets = torch.cat(watch.outputs), train.score[train.pair_index[order]]
        with torch.no_grad():
            step_rel = {n: ((p.detach() - b).norm() / b.norm().clamp_min(1e-30)).item()
                        for n, p, b in zip(names, params, before)}
        record = {"epoch": epoch + 1, "loss_total": losses["total"], "loss_quality": losses["quality"],
                  "loss_nss": losses["nss"], "train_batch_pred_mean": float(quality.double().mean()),
                  "train_target_mean": target_mean,
                  "quality_out_bias": float(model.quality_out.bias.detach()),
                  "frac_pred_below_target": float((quality < targets).double().mean()),
                  "grad_norm_mean": dict(zip(names, (watch.grad_sums / watch.steps).tolist())),
                  "step_rel": step_rel,
                  "weight_norm": {n: p.detach().norm().item() for n, p in zip(names, params)},
                  **evaluate(epoch + 1),
                  "grad_probe": gradient_probe(model, *probe, t.weight_decay),
                  "train_seconds": train_time}
        if epoch + 1 in probe_epochs:
            record["activations"] = activation_probe(model, probe[0], probe[1])
        history.append(record)
        log(f"{name} epoch {epoch + 1}/{epochs} loss {losses['total']:.4f} (quality {losses['quality']:.4f}, "
            f"nss {losses['nss']:.4f}) | val SROCC {_f(record['val_srocc'])} pred std "
            f"{record['val_pred_std']:.3f} | mean pred {record['train_batch_pred_mean']:.2f} "
            f"below {record['frac_pred_below_target']:.3f} [{time.perf_counter() - t0:.1f}s]")
    # the whole train section, recorded as the plain dict (Settings reads one key, it lists none)
    recorded = {**cfg["train"], **{k: v for k, v in variant.items() if k != "overrides"}, "scale": scale}
    return {"variant": name, "config": recorded, "seed": seed, "epochs": epochs,
            "device": str(DEVICE), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "steps_per_epoch": -(-train.num_patches // t.batch_size), "train_patches": train.num_patches,
            "val_pairs": val.num_pairs, "train_pairs": train.num_pairs,
            "val_srocc_input_rms_vs_score": srocc(val_energy, val_score),
            "wall_seconds": time.perf_counter() - started, "history": history}


def _f(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


# ------------------------------------------------------------------------------ report
GROUPS = [  # (label, parameter-name prefixes): the left column stands for both columns
    ("colL.conv1", ["column_left.conv1"]), ("colL.conv2", ["column_left.conv2"]),
    ("colL.conv3", ["column_left.conv3"]), ("colL.conv4", ["column_left.conv4"]),
    ("colL.conv5", ["column_left.conv5"]), ("colL.fc1", ["column_left.fc.fc1"]),
    ("colL.fc2", ["column_left.fc.fc2"]), ("C.conv1", ["diff_sum_low.conv1"]),
    ("C.conv2", ["diff_sum_low.conv2"]), ("C.fc2", ["diff_sum_low.fc.fc2"]),
    ("D.fc1", ["diff_sum_high.fc.fc1"]), ("D.fc2", ["diff_sum_high.fc.fc2"]),
    ("nss_fc1", ["nss_fc1"]), ("nss_fc2", ["nss_fc2"]), ("quality_fc1", ["quality_fc1"]),
    ("quality_fc2", ["quality_fc2"]), ("quality_out", ["quality_out"]),
]


def _group(d, prefix, kind):
    """The entry of parameter `prefix`.`kind` (weight / bias) in a per-parameter dict."""
    return d.get(f"{prefix}.{kind}")


def tables(results, inputs):
    lines = []
    add = lines.append
    add("### Input scale (training patches, both views)\n")
    add("| normalisation | mean | std | min | max | per-patch RMS p10 / median / p90 |")
    add("|---|---|---|---|---|---|")
    for norm in C:
        r = inputs[norm]
        add(f"| {norm} | {r['mean']:.4f} | {r['std']:.4f} | {r['min']:.3f} | {r['max']:.3f} | "
            f"{r['patch_rms_p10']:.4f} / {r['patch_rms_median']:.4f} / {r['patch_rms_p90']:.4f} |")
    add(f"\nstd ratio contrast / reference: {inputs['scale_match_contrast']:.2f} (the factor of `ref_scaled`)\n")
    for name, res in results.items():
        h = res["history"]
        add(f"### {name}: outputs by epoch ({res['steps_per_epoch']} steps an epoch, "
            f"{res['wall_seconds'] / 60:.1f} min)\n")
        add("| epoch | L1 quality | L1 nss | mean pred (train batches) / target mean | pred < target | "
            "val pred std / target std | val SROCC | val SROCC dropout on | train SROCC | "
            "SROCC(val pred, input RMS) |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for r in h:
            if r["epoch"] == 0:
                add(f"| 0 (init) | | | {r['val_pred_mean']:.2f} (val) / {r['val_target_mean']:.2f} | | "
                    f"{r['val_pred_std']:.3g} / {r['val_target_std']:.2f} | {_f(r['val_srocc'])} | "
                    f"{_f(r['val_srocc_dropout_on'])} | {_f(r['train_srocc'])} | {_f(r['val_srocc_vs_input_rms'])} |")
                continue
            add(f"| {r['epoch']} | {r['loss_quality']:.3f} | {r['loss_nss']:.4f} | "
                f"{r['train_batch_pred_mean']:.2f} / {r['train_target_mean']:.2f} | "
                f"{r['frac_pred_below_target']:.3f} | {r['val_pred_std']:.3g} / {r['val_target_std']:.2f} | "
                f"{_f(r['val_srocc'])} | {_f(r['val_srocc_dropout_on'])} | {_f(r['train_srocc'])} | "
                f"{_f(r['val_srocc_vs_input_rms'])} |")
        add(f"\nSROCC(input RMS, score) on the validation pairs: {_f(res['val_srocc_input_rms_vs_score'])}\n")
    for name in [n for n in ("reference", "contrast") if n in results]:
        res = results[name]
        h = res["history"]
        w = res["config"]["nss_weight"]
        probes = [r for r in h if "activations" in r]
        last = h[-1]["epoch"]
        add(f"### {name}: per layer (left column shown; the right column is alike)\n")
        add("Activation RMS of the layer's output on the probe batch (eval mode) at epochs "
            + ", ".join(str(r["epoch"]) for r in probes)
            + "; weight-part / bias RMS at init and last; dead units (% of channels / features "
            "never > 0 on the probe batch) at init and last.\n")
        add("| layer | output RMS by epoch | weight part / bias, init -> last | dead % init -> last | "
            "zero after ReLU % init -> last | input-dependent ReLU units % init -> last |")
        add("|---|---|---|---|---|---|")
        for label, (prefix,) in GROUPS:
            a0 = probes[0]["activations"].get(prefix)
            if a0 is None:
                continue
            a1 = probes[-1]["activations"][prefix]
            rms = " / ".join(f"{r['activations'][prefix]['rms']:.3g}" for r in probes)
            ratio = (f"{a0['signal_rms'] / max(a0['bias_rms'], 1e-30):.2f} -> "
                     f"{a1['signal_rms'] / max(a1['bias_rms'], 1e-30):.2f}")
            dead = ("" if a0["dead"] is None else f"{100 * a0['dead']:.0f} -> {100 * a1['dead']:.0f}")
            zero = ("" if a0["dead"] is None else
                    f"{100 * a0['zero_after_relu']:.0f} -> {100 * a1['zero_after_relu']:.0f}")
            switch = ("" if a0.get("switching") is None else
                      f"{100 * a0['switching']:.0f} -> {100 * a1['switching']:.0f}")
            add(f"| {label} | {rms} | {ratio} | {dead} | {zero} | {switch} |")
        add("")
        add(f"Gradients on the probe batch (weights): ||g quality||, ||{w:g} x g nss||, their ratio, "
            "||weight decay x w||, at epochs 1 and last; mean ||grad|| over the last epoch's steps; "
            f"||dw|| / ||w|| in epoch 1 and epoch {last}; the same for the biases.\n")
        add("| layer | g_q (1 / last) | w g_nss (1 / last) | nss / q (last) | decay (last) | "
            "mean step grad (last) | dW/W ep 1 / last | db/b ep 1 / last |")
        add("|---|---|---|---|---|---|---|---|")
        e1, eL = h[1], h[-1]
        for label, (prefix,) in GROUPS:
            gq1, gqL = _group(e1["grad_probe"], prefix, "weight"), _group(eL["grad_probe"], prefix, "weight")
            if gq1 is None:
                continue
            nssL = w * gqL["grad_nss_unweighted"]
            ratio = nssL / gqL["grad_q"] if gqL["grad_q"] > 0 else float("inf")
            add(f"| {label} | {gq1['grad_q']:.3g} / {gqL['grad_q']:.3g} | "
                f"{w * gq1['grad_nss_unweighted']:.3g} / {nssL:.3g} | {ratio:.3g} | {gqL['decay']:.3g} | "
                f"{_group(eL['grad_norm_mean'], prefix, 'weight'):.3g} | "
                f"{_group(e1['step_rel'], prefix, 'weight'):.3g} / {_group(eL['step_rel'], prefix, 'weight'):.3g} | "
                f"{_group(e1['step_rel'], prefix, 'bias'):.3g} / {_group(eL['step_rel'], prefix, 'bias'):.3g} |")
        add("")
    if len(results) > 1:
        add("### All variants: validation SROCC by epoch\n")
        longest = max(len(r["history"]) for r in results.values())
        shown = [e for e in (0, 1, 2, 3, 5, 8, 10, 12, 15, 20, 25, 30) if e < longest] + [longest - 1]
        shown = sorted(set(shown))
        add("| variant | " + " | ".join(f"ep {e}" for e in shown) + " | best (epoch) |")
        add("|---|" + "---|" * (len(shown) + 1))
        for name, res in results.items():
            h = res["history"]
            cells = [_f(h[e]["val_srocc"]) if e < len(h) else "" for e in shown]
            vals = [(r["val_srocc"], r["epoch"]) for r in h[1:] if r["val_srocc"] is not None]
            best = max(vals) if vals else (None, None)
            add(f"| {name} | " + " | ".join(cells) + f" | {_f(best[0])} ({best[1]}) |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--variants", nargs="+", default=["reference", "contrast"], choices=list(VARIANTS))
    run.add_argument("--epochs", type=int, default=15)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--split-seed", type=int, default=0)
    run.add_argument("--demo-size", default="small", choices=["small", "full"],
                     help="full: the 611x344 demo (565 steps an epoch; meant for a GPU)")
    run.add_argument("--device", default="cpu", help="cpu (the default, as measured) or cuda")
    run.add_argument("--light", action="store_true",
                     help="dropout-on validation and training-pair SROCC at the probe epochs only")
    run.add_argument("--out", type=Path, default=OUT)
    inp = sub.add_parser("inputs", help="input statistics only (no training): "
                         "inputs_<size>.json; --demo-size full for the full-size demo")
    inp.add_argument("--demo-size", default="small", choices=["small", "full"])
    inp.add_argument("--split-seed", type=int, default=0)
    inp.add_argument("--out", type=Path, default=OUT)
    rep = sub.add_parser("report")
    rep.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as train.deterministic on a CPU
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cmd == "run":
        t0 = time.perf_counter()
        global DEVICE
        DEVICE = torch.device(args.device)
        data = load_data(args.split_seed, args.demo_size, device=DEVICE)
        inputs = input_stats(data)
        (args.out / "inputs.json").write_text(json.dumps(
            {"inputs": inputs, "init_bounds": init_bounds()}, indent=1))
        print(f"data ready in {time.perf_counter() - t0:.1f}s; "
              f"{data['train']['pair_index'].shape[0]} training patch pairs, "
              f"{len(data['train']['pairs'])} / {len(data['val']['pairs'])} train / val pairs")
        for name in args.variants:
            res = run_variant(name, data, args.epochs, args.seed, inputs["scale_match_contrast"],
                              light=args.light)
            (args.out / f"{name}.json").write_text(json.dumps(res))
            print(f"{name}: {res['wall_seconds']:.0f}s")
        return
    if args.cmd == "inputs":
        t0 = time.perf_counter()
        data = load_data(args.split_seed, args.demo_size, with_nss=False)
        rows = input_stats(data)
        rows["pairs"] = {k: len(data[k]["pairs"]) for k in ("train", "val")}
        rows["train_patches"] = int(data["train"]["pair_index"].shape[0])
        (args.out / f"inputs_{args.demo_size}.json").write_text(json.dumps(rows, indent=1))
        print(json.dumps(rows["energy"], indent=1))
        print(f"{time.perf_counter() - t0:.0f}s")
        return
    meta = json.loads((args.out / "inputs.json").read_text())
    for size in ("small", "full"):
        extra = args.out / f"inputs_{size}.json"
        if extra.is_file():
            meta[f"inputs_{size}"] = json.loads(extra.read_text())
    order = list(VARIANTS)
    results = {n: json.loads((args.out / f"{n}.json").read_text())
               for n in order if (args.out / f"{n}.json").is_file()}
    (args.out / "diagnosis.json").write_text(json.dumps({**meta, "variants": results}))
    print(tables(results, meta["inputs"]))


if __name__ == "__main__":
    main()
