"""One-shot check of a GPU machine: the CUDA tests, a demo run, resume after a kill, NSS on
the GPU, training throughput, the projected paper protocol, and 100 epochs of it on the
full-size demo. Each step prints what it measured; a table and two files close the run.

    python benchmarks/gpu_check.py OUT_DIR [--device cuda|cpu] [--quick]
                                   [--skip STEP,...] [--only STEP,...] [--budget SECONDS]

Writes OUT_DIR/gpu_check.json (everything measured) and OUT_DIR/gpu_check.md (the tables).
Every step runs its work in subprocesses with their own timeouts; a failed or timed-out step
is recorded and the next one runs. `--quick` shrinks every step to a smoke test
(`--device cpu --quick` runs to the end on a 2-core CPU in about 2-3 minutes).

Steps (names for --skip / --only):
  tests       pytest -m cuda: the tests marked as needing a GPU (skipped on a CPU)
  demo        2 epochs on the demo database, then evaluate.py and predict.py on its best.pt
  resume      SIGKILL in epoch 2, --resume, metrics compared with an uninterrupted run
              (train.deterministic=true, train.tf32=false: exact equality is expected)
  nss         NSS targets on the device vs the CPU (max abs difference, 1e-8 expected), pairs/s
  throughput  benchmarks/train_throughput.py variants (eager / graph / compile x fp32 / tf32 /
              bf16, one split vs concurrent splits, where the script offers them)
  projection  wall time of the 500-epoch protocol on LIVE-I-sized data (79,716 training and
              26,572 validation patch pairs a split), 1 and 10 splits, from the measured rates
  protocol    100 epochs of the paper's protocol (SGD lr 1e-3, batch 128, constant LR) on the
              full-size demo (dataset.demo_size=full, 611x344 views), once with the original
              patch normalisation and once with patches.normalisation=contrast, run side by
              side on the one GPU; the validation SROCC curves and the test metrics

Time budget on one H100 (the whole check must end within 9 minutes; --budget, default 540 s,
caps the last step to what is left). Estimated from the CPU figures of this repository and
the FLOP count (~33 GFLOP per 128-patch training step, forward + backward, i.e. ~0.26 GFLOP
a patch pair; an eager step costs ~2-3 ms of host time, so eager training is bound near
40-60k patch pairs/s whatever the GPU):
  tests        ~60 s  (3 short CUDA trainings on the tiny fixture database + collection)
  demo         ~45 s  (demo build 8 s the first time, 3 process starts ~10 s each)
  resume       ~50 s  (3 trainings of the small demo, 20 epochs of 2,604 patch pairs)
  nss          ~20 s
  throughput  ~150 s  (one process per variant, ~20 s each incl. 1 GB of synthetic patches;
                       10 splits at once: 10 captures, ~30 s)
  protocol    ~230 s  (full-size demo build ~20 s on 16 cores, NSS ~10 s; then 2 runs side by
                       side, 100 epochs x 70,525 training patch pairs = 1.8 PFLOP each,
                       ~1.5 s an epoch when eager; the curves so far are kept if time runs out)
  total       ~555 s  (the protocol step is cut to what --budget leaves)
A rerun that must fit what is left of a 15-minute allowance: `--skip tests,demo,resume`
(or `--only protocol --budget 300`); rerunning finds the demo databases and NSS cache built.

The GPU machine has PyTorch but cannot download anything: these wheels must travel with the
repository and be installed there first (`pip install --no-deps WHEEL`):
  stereodemo==0.7 (the demo database's source images; without it the demo, resume, nss and
  protocol steps fail and say so). openpyxl is not needed here (Waterloo MOS.xlsx only);
  pytest, tensorboard, matplotlib, scipy, scikit-image and PyYAML must be installed.
"""
import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("tests", "demo", "resume", "nss", "throughput", "projection", "protocol")

# LIVE 3D Phase I: 365 pairs x 364 patches of 640x360 views; 60 / 20 % of them train / validate
LIVE1_TRAIN_PATCHES, LIVE1_VAL_PATCHES, PROTOCOL_EPOCHS = 79_716, 26_572, 500
THROUGHPUT_VARIANTS = [("eager", "fp32"), ("eager", "tf32"), ("eager", "bf16"),
                       ("graph", "fp32"), ("graph", "tf32"), ("graph", "bf16"),
                       ("compile", "bf16")]
CONCURRENT_SPLITS = 10
# One launch a step (graph) is what lets the splits' kernels overlap: eager steps are bound
# by the host's launches, which interleaving does not reduce.
CONCURRENT_VARIANT = ("graph", "bf16")
DEMO_EPOCHS, PAPER_EPOCHS = 2, 100
PAPER = ["train.optimizer=sgd", "train.lr=0.001", "train.lr_step=0", "train.batch_size=128"]


# --------------------------------------------------------------------------- helpers
class StepFailed(Exception):
    pass


def run(cmd, timeout, log=None, env=None):
    """Run `cmd` (a list) in its own process group; returns (returncode or 'timeout', stdout,
    stderr, seconds). On timeout the whole group is killed and what it printed is kept."""
    started = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    try:
        out, err = proc.communicate(timeout=max(1, timeout))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = "timeout"
    if log is not None:
        Path(log).write_text(f"$ {' '.join(map(str, cmd))}\n{out}\n--- stderr ---\n{err}")
    return rc, out, err, time.perf_counter() - started


def python(*args):
    return [sys.executable, *args]


def check(rc, err, what):
    if rc != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])[-400:]
        raise StepFailed(f"{what}: {'timed out' if rc == 'timeout' else f'exit {rc}'}: {tail}")


def common(ctx, name, *extra):
    """Overrides of a train.py run of this check: its outputs inside OUT_DIR; with --quick
    the tiny synthetic database instead of the demo."""
    return [f"device={ctx.device}", f"out_dir={ctx.out / 'runs' / name}",
            f"tensorboard.dir={ctx.out / 'tensorboard'}", *ctx.data(), *extra]


def tiny_database(folder, scenes=8, levels=3, size=(80, 64)):
    """--quick's database: `scenes` x `levels` noisy synthetic stereo pairs of 80x64 (4 patches
    a view) with a CSV manifest, score = noise level; every step on it takes seconds."""
    import numpy as np
    from PIL import Image

    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rows = ["left,right,score,ref,distortion"]
    for s in range(scenes):
        base = 128 + 60 * np.sin(xx / (3 + s)) * np.cos(yy / (4 + s))
        for level in range(levels):
            for eye, shift in (("l", 0), ("r", 2)):
                view = np.roll(base, shift, axis=1) + rng.normal(0, 12 * level, (h, w))
                Image.fromarray(np.clip(view, 0, 255).astype(np.uint8)).save(folder / f"s{s}_{level}_{eye}.png")
            rows.append(f"s{s}_{level}_l.png,s{s}_{level}_r.png,{10 * level + s},scene{s},wn")
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def val_curve(text):
    """[(epoch, val SROCC)] from train.py's epoch lines."""
    return [(int(m.group(1)), None if m.group(2) == "n/a" else float(m.group(2)))
            for m in re.finditer(r"^epoch (\d+)/\d+ .*?\| val SROCC (\S+)", text, re.M)]


def epoch_seconds(text):
    return [float(s) for s in re.findall(r"^epoch \d+/\d+ .*\[([\d.]+)s\]$", text, re.M)]


def numbers_diff(a, b):
    """The largest absolute difference between the numbers of two JSON trees."""
    if isinstance(a, dict) and isinstance(b, dict):
        return max([numbers_diff(a[k], b[k]) for k in a.keys() & b.keys()] or [0.0])
    if isinstance(a, list) and isinstance(b, list):
        return max([numbers_diff(x, y) for x, y in zip(a, b)] or [0.0])
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b))
    return 0.0


def project(rate, score_rate, splits=1, aggregate_rate=None):
    """Seconds of the 500-epoch LIVE-I-sized protocol: training at `rate` patch pairs/s plus a
    validation scoring each epoch; `splits` one after another, or at `aggregate_rate` when
    they train concurrently."""
    train = LIVE1_TRAIN_PATCHES * splits / (aggregate_rate or rate)
    val = LIVE1_VAL_PATCHES * splits / score_rate
    return PROTOCOL_EPOCHS * (train + val)


# --------------------------------------------------------------------------- steps
def step_tests(ctx):
    cmd = python("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "cuda", "tests")
    rc, out, err, _ = run(cmd, ctx.timeout(240, 60), ctx.out / "tests.log")
    summary = (out.strip().splitlines() or ["(no output)"])[-1]
    print(f"  pytest -m cuda: {summary}")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    if rc not in (0, 5):  # 5: nothing collected
        raise StepFailed(f"pytest: {summary}")
    return {"summary": summary, **counts}


def step_demo(ctx):
    run_dir = ctx.out / "runs" / "demo"
    rc, out, err, secs = run(python("train.py", *common(ctx, "demo", f"train.epochs={DEMO_EPOCHS}")),
                             ctx.timeout(300, 240), ctx.out / "demo_train.log")
    check(rc, err, "train.py")
    trained = json.loads((run_dir / "metrics.json").read_text())["test"]
    print(f"  train.py, {DEMO_EPOCHS} epochs: {secs:.1f} s, test SROCC {trained['srocc']:.4f}")
    rc, out, err, _ = run(python("evaluate.py", "--checkpoint", run_dir / "best.pt", "--out",
                                 run_dir / "eval", f"device={ctx.device}"),
                          ctx.timeout(120, 120), ctx.out / "demo_evaluate.log")
    check(rc, err, "evaluate.py")
    evaluated = json.loads((run_dir / "eval" / "metrics.json").read_text())["test"]
    diff = max(abs(trained[k] - evaluated[k]) for k in ("srocc", "plcc", "rmse"))
    print(f"  evaluate.py: test SROCC {evaluated['srocc']:.4f} (largest difference from the run: {diff:.2e})")
    manifest = ctx.tiny if ctx.quick else ROOT / "data" / "demo" / "manifest.csv"
    first = dict(zip(*(line.split(",") for line in manifest.read_text().splitlines()[:2])))
    rc, out, err, _ = run(python("predict.py", "--checkpoint", run_dir / "best.pt", "--device",
                                 ctx.device, manifest.parent / first["left"], manifest.parent / first["right"]),
                          ctx.timeout(60, 60), ctx.out / "demo_predict.log")
    check(rc, err, "predict.py")
    score = float(out.strip().splitlines()[-1].split("\t")[-1])
    print(f"  predict.py on {first['left']}: {score:.4f}")
    return {"train_s": round(secs, 1), "test_srocc": trained["srocc"],
            "evaluate_max_diff": diff, "predict_score": score}


def step_resume(ctx):
    epochs = 4 if ctx.quick or ctx.device == "cpu" else 20
    extra = [f"train.epochs={epochs}", "train.deterministic=true", "train.tf32=false",
             "train.checkpoint_every=1", "train.scatter_every=1000"]
    rc, out, err, _ = run(python("train.py", *common(ctx, "resume_whole", *extra)),
                          ctx.timeout(240, 240), ctx.out / "resume_whole.log")
    check(rc, err, "uninterrupted run")
    work = ctx.out / "runs" / "resume_cut"
    log = open(ctx.out / "resume_cut.log", "w")
    proc = subprocess.Popen(python("train.py", *common(ctx, "resume_cut", *extra)), cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + ctx.timeout(240, 240)
    while not (work / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # last.pt of epoch 1 is there: epoch 2 is running
    proc.wait()
    log.close()
    if not (work / "last.pt").exists():
        raise StepFailed("the run to kill wrote no last.pt: see resume_cut.log")
    if (work / "metrics.json").exists():
        raise StepFailed("the run ended before it could be killed (raise the epochs)")
    rc, out, err, _ = run(python("train.py", "--resume", f"out_dir={work}"),
                          ctx.timeout(240, 240), ctx.out / "resume_resumed.log")
    check(rc, err, "resumed run")
    after = re.search(r"after epoch (\d+)", out)
    got = json.loads((work / "metrics.json").read_text())
    want = json.loads((ctx.out / "runs" / "resume_whole" / "metrics.json").read_text())
    for m in (got, want):  # the protocol cards differ by design (out_dir, wall time)
        m.pop("protocol", None)
    diff = numbers_diff(got, want)
    print(f"  killed after epoch {after.group(1) if after else '?'} of {epochs}, resumed: "
          f"metrics {'identical' if got == want else f'differ (largest {diff:.2e})'}")
    if got != want:
        raise StepFailed(f"resumed metrics differ from the uninterrupted run (largest {diff:.2e})")
    return {"epochs": epochs, "killed_after_epoch": int(after.group(1)) if after else None,
            "identical": True}


NSS_SNIPPET = r"""
import json, sys, time, torch
from siqa import config
from siqa.experiment import load_pairs
from siqa.nss.cache import read_pair
from siqa.nss.features import nss_features_batch
device, n = sys.argv[1], int(sys.argv[2])
pairs = load_pairs(config.load_config(overrides=sys.argv[3:]))[:n]
views = [read_pair(p.left, p.right) for p in pairs]
lefts, rights = [v[0] for v in views], [v[1] for v in views]
nss_features_batch(lefts[:1], rights[:1], device=device)  # warm-up
t0 = time.perf_counter(); cpu = nss_features_batch(lefts, rights, device="cpu"); cpu_s = time.perf_counter() - t0
if device.startswith("cuda"): torch.cuda.synchronize()
t0 = time.perf_counter(); dev = nss_features_batch(lefts, rights, device=device); dev_s = time.perf_counter() - t0
print("RESULT " + json.dumps({"pairs": n, "view": list(lefts[0].shape[::-1]),
      "max_abs_diff": float(abs(dev - cpu).max()), "cpu_pairs_per_s": n / cpu_s,
      "device_pairs_per_s": n / dev_s}))
"""


def step_nss(ctx):
    n = 2 if ctx.quick else 32
    rc, out, err, _ = run(python("-c", NSS_SNIPPET, ctx.device, n, *ctx.data("full")), ctx.timeout(180, 120),
                          ctx.out / "nss.log")
    check(rc, err, "NSS")
    res = json.loads(re.search(r"^RESULT (.*)$", out, re.M).group(1))
    print(f"  {n} pairs of {res['view'][0]}x{res['view'][1]}: max |device - cpu| = "
          f"{res['max_abs_diff']:.2e}; {res['device_pairs_per_s']:.1f} pairs/s on {ctx.device}, "
          f"{res['cpu_pairs_per_s']:.1f} pairs/s on the CPU (one process)")
    if res["max_abs_diff"] > 1e-8:
        raise StepFailed(f"NSS on {ctx.device} differs from the CPU by {res['max_abs_diff']:.2e}")
    return res


def step_throughput(ctx):
    script = ROOT / "benchmarks" / "train_throughput.py"
    rc, help_text, _, _ = run(python(script, "--help"), 60)
    steps = 2 if ctx.quick else 50
    size = ["--pairs", 4, "--val-pairs", 4] if ctx.quick else []  # a smoke test: small synthetic data
    rates = {}
    # the new interface (--step, --precision, --json; one variant per process); "--step" alone
    # would also match today's --steps
    if re.search(r"--step\b(?!s)", help_text) and "--precision" in help_text:
        for step, precision in THROUGHPUT_VARIANTS:
            if ctx.device == "cpu" and (precision != "fp32" or (ctx.quick and step != "eager")):
                continue
            path = ctx.out / f"throughput_{step}_{precision}.json"
            rc, out, err, _ = run(python(script, "--device", ctx.device, "--step", step,
                                         "--precision", precision, "--steps", steps, *size, "--json", path),
                                  ctx.timeout(150, 90), ctx.out / f"throughput_{step}_{precision}.log")
            if rc == 0 and path.is_file():
                rates[f"{step}/{precision}"] = json.loads(path.read_text())
            else:
                rates[f"{step}/{precision}"] = {"failed": str(rc)}
    else:  # the flags of today's script: project vs original, float32 and bf16 autocast
        for name, flags in (("eager/fp32", []), ("eager/bf16", ["--amp"])):
            if name == "eager/bf16" and ctx.device == "cpu":
                continue
            rc, out, err, _ = run(python(script, "--device", ctx.device, "--steps", steps,
                                         "--warmup", 1 if ctx.quick else 3, *flags),
                                  ctx.timeout(240, 240), ctx.out / f"throughput_{name.replace('/', '_')}.log")
            m = re.search(r"^project\s+([\d.]+)", out, re.M)
            v = re.search(r"validation scoring of (\d+) pairs: ([\d.]+) s", out)
            rates[name] = ({"patch_pairs_per_s": float(m.group(1)),
                            "val_patch_pairs_per_s": int(v.group(1)) * 364 / float(v.group(2)) if v else None}
                           if rc == 0 and m else {"failed": str(rc)})
    if "--splits" in help_text:  # the splits at once, in the variant where it can pay off
        splits, step, precision = ((CONCURRENT_SPLITS, *CONCURRENT_VARIANT) if ctx.device != "cpu"
                                   else (2, "eager", "fp32"))  # CPU: a smoke test of the path
        path = ctx.out / "throughput_concurrent.json"
        rc, out, err, _ = run(python(script, "--device", ctx.device, "--splits", splits, "--step", step,
                                     "--precision", precision, "--steps", steps, *size, "--json", path),
                              ctx.timeout(150, 90), ctx.out / "throughput_concurrent.log")
        rates[f"concurrent x{splits} {step}/{precision}"] = (
            json.loads(path.read_text()) if rc == 0 and path.is_file() else {"failed": str(rc)})
    for name, r in rates.items():
        rate = r.get("patch_pairs_per_s")
        print(f"  {name:<16} " + (f"{rate:>12,.0f} patch pairs/s" if rate else f"failed ({r.get('failed')})"))
    ctx.results["throughput_rates"] = rates
    if not any(r.get("patch_pairs_per_s") for r in rates.values()):
        raise StepFailed("no variant ran")
    return rates


def step_projection(ctx):
    rates = ctx.results.get("throughput_rates") or {}
    ok = {k: v for k, v in rates.items() if v.get("patch_pairs_per_s") and not k.startswith("concurrent")}
    if not ok:
        raise StepFailed("no measured throughput (run the throughput step)")
    best = max(ok, key=lambda k: ok[k]["patch_pairs_per_s"])
    rate = ok[best]["patch_pairs_per_s"]
    score_rate = next((v["val_patch_pairs_per_s"] for v in rates.values() if v.get("val_patch_pairs_per_s")),
                      3 * rate)  # scoring is a forward only: ~3x a training step where unmeasured
    conc = next((v.get("patch_pairs_per_s") for k, v in rates.items()
                 if k.startswith(f"concurrent x{CONCURRENT_SPLITS} ")), None)
    one, ten = project(rate, score_rate), project(rate, score_rate, CONCURRENT_SPLITS, conc)
    print(f"  fastest variant {best}: {rate:,.0f} patch pairs/s; validation {score_rate:,.0f} patch pairs/s")
    print(f"  500 epochs, LIVE-I-sized split: {one / 60:.1f} min for 1 split, {ten / 60:.1f} min for "
          f"{CONCURRENT_SPLITS} ({'concurrent' if conc else 'one after another'})")
    return {"variant": best, "patch_pairs_per_s": rate, "val_patch_pairs_per_s": score_rate,
            "one_split_min": one / 60, "ten_splits_min": ten / 60, "ten_concurrent": bool(conc)}


PREPARE_SNIPPET = r"""
import sys
from siqa import config
from siqa.data.nss import nss_from_config
from siqa.experiment import load_pairs
cfg = config.load_config(overrides=sys.argv[2:])
pairs = load_pairs(cfg)
nss_from_config(pairs, cfg["nss"], progress=False, device=sys.argv[1])
print(f"RESULT {len(pairs)}")
"""


def step_protocol(ctx):
    epochs = 2 if ctx.quick else PAPER_EPOCHS
    data = ctx.data("full")
    rc, out, err, secs = run(python("-c", PREPARE_SNIPPET, ctx.device, *ctx.data("full")),
                             ctx.timeout(240, 240), ctx.out / "protocol_prepare.log")
    check(rc, err, "building the database and its NSS targets")
    print(f"  {'tiny' if ctx.quick else 'full-size demo'} database and NSS targets ready: {secs:.1f} s")
    procs = {}
    for norm in ("reference", "contrast"):  # side by side: one GPU, two processes
        log = open(ctx.out / f"protocol_{norm}.log", "w")
        cmd = python("train.py", *common(ctx, f"protocol_{norm}", *data, *PAPER, f"train.epochs={epochs}",
                                         f"patches.normalisation={norm}", "train.checkpoint_every=10",
                                         "train.scatter_every=20"))
        procs[norm] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)}), log)
    deadline = time.time() + ctx.timeout(3600, 300)
    while time.time() < deadline and any(p.poll() is None for p, _ in procs.values()):
        time.sleep(1)
    out = {}
    for norm, (proc, log) in procs.items():
        timed_out = proc.poll() is None
        if timed_out:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        text = (ctx.out / f"protocol_{norm}.log").read_text()
        curve, secs = val_curve(text), epoch_seconds(text)
        metrics_file = ctx.out / "runs" / f"protocol_{norm}" / "metrics.json"
        test = json.loads(metrics_file.read_text())["test"] if metrics_file.is_file() else None
        out[norm] = {"epochs_done": len(curve), "val_srocc": curve, "mean_epoch_s": sum(secs) / len(secs) if secs else None,
                     "test": {k: test[k] for k in ("srocc", "plcc", "krocc", "rmse")} if test else None,
                     "timed_out": timed_out, "returncode": proc.returncode}
        best = max((s for _, s in curve if s is not None), default=None)
        print(f"  {norm:<9}: {len(curve)}/{epochs} epochs"
              + (f", {out[norm]['mean_epoch_s']:.2f} s an epoch" if secs else "")
              + (f", best val SROCC {best:.4f}" if best is not None else "")
              + (f", test SROCC {test['srocc']:.4f}" if test else " (not finished: no test)"))
    if all(o["epochs_done"] == 0 for o in out.values()):
        raise StepFailed("no epoch finished: see protocol_*.log")
    return out


# --------------------------------------------------------------------------- report
def figures_line(name, res):
    if not isinstance(res, dict):
        return ""
    if name == "tests":
        return res.get("summary", "")
    if name == "demo":
        return f"test SROCC {res['test_srocc']:.3f}; evaluate.py differs by {res['evaluate_max_diff']:.1e}"
    if name == "resume":
        return f"killed after epoch {res['killed_after_epoch']}/{res['epochs']}; metrics identical"
    if name == "nss":
        return (f"max diff {res['max_abs_diff']:.1e}; {res['device_pairs_per_s']:.1f} pairs/s "
                f"(CPU {res['cpu_pairs_per_s']:.1f})")
    if name == "throughput":
        return "; ".join(f"{k} {v['patch_pairs_per_s']:,.0f}/s" for k, v in res.items() if v.get("patch_pairs_per_s"))
    if name == "projection":
        return f"1 split {res['one_split_min']:.1f} min, 10 splits {res['ten_splits_min']:.1f} min"
    if name == "protocol":
        return "; ".join(f"{k}: {v['epochs_done']} epochs, best val SROCC "
                         f"{max((s for _, s in v['val_srocc'] if s is not None), default=float('nan')):.3f}"
                         + (f", test {v['test']['srocc']:.3f}" if v["test"] else "") for k, v in res.items())
    return ""


def markdown(report):
    env = report["environment"]
    lines = [f"# gpu_check: {env['device_name']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, Python {env['python']}, "
             f"{'quick' if report['quick'] else 'full'} run, {report['total_s']:.0f} s in all", "",
             "| step | status | seconds | figures |", "|---|---|---|---|"]
    for name, step in report["steps"].items():
        figures = figures_line(name, step.get("result")) if step["status"] == "ok" else step.get("error", "")
        lines.append(f"| {name} | {step['status']} | {step.get('seconds', 0):.0f} | {figures} |")
    protocol = report["steps"].get("protocol", {}).get("result")
    if isinstance(protocol, dict) and protocol:
        where = "the tiny database (--quick)" if report["quick"] else "the full-size demo"
        lines += ["", f"Validation SROCC of the paper's protocol on {where}:", "",
                  "| epoch | " + " | ".join(protocol) + " |", "|---|" + "---|" * len(protocol)]
        curves = {k: dict(v["val_srocc"]) for k, v in protocol.items()}
        last = max((max(c, default=0) for c in curves.values()), default=0)
        for epoch in sorted({e for e in range(10, last + 1, 10)} | {1, last} - {0}):
            cells = [curves[k].get(epoch) for k in protocol]
            lines.append(f"| {epoch} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def environment(device):
    import importlib.util

    import torch

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": device,
            "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
            "packages": {name: importlib.util.find_spec(name) is not None
                         for name in ("stereodemo", "pytest", "tensorboard", "matplotlib", "scipy",
                                      "skimage", "openpyxl")}}


class Context:
    def __init__(self, out, device, quick, budget):
        self.out, self.device, self.quick, self.budget = out, device, quick, budget
        self.started = time.perf_counter()
        self.results = {}
        self.tiny = tiny_database(out / "tinydb") if quick else None

    def data(self, demo_size="small"):
        """The database overrides: the demo (of `demo_size`), or with --quick the tiny one."""
        if self.quick:
            return ["dataset.name=csv", f"dataset.manifest={self.tiny}",
                    f"nss.cache_dir={self.out / 'cache'}", "nss.workers=1"]
        return [f"dataset.demo_size={demo_size}"]

    def left(self):
        return self.budget - (time.perf_counter() - self.started)

    def timeout(self, full, quick):
        """A step's timeout: its own, never past the whole check's budget."""
        return max(5, min(quick if self.quick else full, self.left() - 5))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="every step as a smoke test")
    parser.add_argument("--skip", default="", help="steps to leave out, comma-separated")
    parser.add_argument("--only", default="", help="the only steps to run, comma-separated")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole check")
    args = parser.parse_args()
    chosen = [s for s in STEPS if (not args.only or s in args.only.split(","))
              and s not in args.skip.split(",")]
    unknown = set(filter(None, (args.only + "," + args.skip).split(","))) - set(STEPS)
    if unknown:
        sys.exit(f"unknown step(s) {', '.join(sorted(unknown))}: the steps are {', '.join(STEPS)}")
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, args.device, args.quick, args.budget)
    report = {"environment": environment(args.device), "quick": args.quick, "steps": {}}
    print(f"gpu_check on {report['environment']['device_name']} (torch {report['environment']['torch']}), "
          f"steps: {', '.join(chosen)}")
    for name in chosen:
        print(f"[{name}]", flush=True)
        started = time.perf_counter()
        entry = {}
        if ctx.left() < 10:
            entry = {"status": "skipped", "error": "no time left in the budget"}
        else:
            try:
                entry = {"status": "ok", "result": globals()[f"step_{name}"](ctx)}
            except StepFailed as err:
                entry = {"status": "failed", "error": str(err)}
            except Exception as err:  # a bug in this script must not lose the other steps
                entry = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        entry["seconds"] = time.perf_counter() - started
        if entry["status"] != "ok":
            print(f"  {entry['status'].upper()}: {entry['error']}")
        report["steps"][name] = entry
        sys.stdout.flush()
    report["total_s"] = time.perf_counter() - ctx.started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print()
    print(markdown(report))
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
