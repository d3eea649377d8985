"""One-shot check of a GPU machine, in the order of what it tells: the user's path (train,
evaluate, predict with device=auto), the CUDA tests, training throughput and the projected
paper protocol, resume after a kill, NSS on the GPU, and the protocol's curve on the full-size
demo. Each step prints what it measured; a table closes the run.

    python benchmarks/gpu_check.py OUT [--device cuda|cpu] [--quick] [--plan] [--budget 480]
                                   [--skip STEP,...] [--only STEP,...] [--work DIR]

OUT receives only what must come back from the machine, all small: gpu_check.json
(everything measured), gpu_check.md (the tables) and logs/ (one log per subprocess). Both
reports are rewritten atomically before and after every step, and on SIGTERM or SIGINT (which
also kill the running subprocesses, record the step as interrupted and exit 143 or 130), so
an outer time limit never loses what was measured. Run folders, the tiny database and caches
go to --work (default data/gpu_check, git-ignored; its runs/ is emptied at the start); the
demo databases and the NSS cache stay where train.py keeps them (data/).

Budget: --budget seconds (default 480, i.e. 60 s under a 9-minute outer limit) from the
start. No subprocess starts with less than 10 s of it left (the step is recorded as skipped)
and each subprocess's timeout is cut to what is left. Exit status 1 when a step failed or was
skipped, 0 when every chosen step ran. `--quick` shrinks every step to a smoke test on the
tiny synthetic database, NSS on 2 pairs of the small demo (`--device cpu --quick`: 75-110 s
on a 2-core CPU); its parity and protocol steps, which run several trainings side by side,
train the `tiny` network (the paper's network in the user and resume steps and in the
benchmarks: the three parity runs of it wrote 1.6 GB of checkpoints at once). `--plan`
prints the chosen steps with their estimates and runs nothing.

Steps (names for --skip / --only), with their estimates on one H200 (from the CPU figures of
this repository and the FLOP count: ~0.26 GFLOP a patch pair per training step; an eager step
costs ~2-3 ms of host time, so eager training is bound near 40-60k patch pairs/s):
  user        45 s  python train.py device=auto (not cuda: that auto finds the GPU is the point)
                    for 2 epochs on the demo, evaluate.py on its best.pt (the test metrics must
                    equal metrics.json's), predict.py on one pair
  tests       60 s  pytest -m cuda tests (3 short CUDA trainings on the tiny fixture database)
  throughput 110 s  benchmarks/train_throughput.py, eager / graph x tf32 / bf16 and 10 splits at
                    once (graph, bf16), each timed for >= 2 s after its warm-up with train.py's
                    numerics; the 500-epoch LIVE-I-sized protocol projected for 1 and 10 splits
  resume      45 s  SIGKILL in epoch 2, --resume, metrics equal to an uninterrupted run's
                    (train.deterministic=true, train.tf32=false: exact equality is expected)
  nss         35 s  NSS targets on the GPU vs the CPU (max abs difference, 1e-8 expected); builds
                    the full-size demo (~20 s) the first time
  fused       90 s  benchmarks/fused_throughput.py: 1, 10 and 20 splits fused (one vmapped network,
                    train.concurrent_splits=fused, rounds captured as CUDA graphs) in bf16, 10
                    in TF32, full and partial rounds of unequal splits (as the stored LIVE-I
                    ones) each timed for >= 2 s, against 10 splits on CUDA streams (graph);
                    patch pairs/s summed over the splits, the 500-epoch LIVE-I-sized protocol
                    projected for 10 splits fused; JSON after each K, every subprocess within
                    the step's 90 s
  parity      90 s  the default demo run (short profile, 3 splits: train.repeats=3) three times
                    side by side: fp32 eager, fp32 eager again, bf16 graph; each split's test
                    SROCC in bf16 minus its fp32 one (same split, same seed) against the fp32
                    run-to-run noise (the test of train.amp's default); within the step's 90 s
  protocol   170 s  40 epochs of the paper's protocol (SGD lr 1e-3, batch 128, constant LR) on
                    the full-size demo, original and contrast patch normalisation side by side
                    on the one GPU; the validation SROCC curves (kept so far if time runs out);
                    not in the default plan (--only protocol)
  total      475 s  (the default plan: every step but protocol)
`--only fused,parity` fits 240 s. A rerun within what is left of a 15-minute allowance:
`--only throughput,protocol --budget 240` (reruns find the demo databases and the NSS cache
built).

Preparation. The box has Python 3.12 and torch but no network, and lacks stereodemo (the
demo's images), dtcwt (the NSS tests' oracle) and openpyxl. scripts/rehearse_gpu_box.sh runs
these lines as written, in a CPU venv built like the box.
  on the dev machine (5 wheels, ~4.3 MB; the device tool carries at most 64 MiB of ignored paths):
    bash scripts/gpu_box_wheels.sh
  carried to the box with the repository (the run tool's carry=["wheels"]); there:
    python -m pip install --no-deps --no-index --ignore-requires-python --upgrade --target "$PWD/data/gpu_deps" wheels/*.whl
    PYTHONPATH="$PWD/data/gpu_deps" python benchmarks/gpu_check.py "$OUT"
(stereodemo declares Requires-Python !=3.12, hence --ignore-requires-python; only its image
files are read.) The subprocesses get the repository prepended to the caller's PYTHONPATH,
never in its place, so the carried packages stay visible to them.
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_STEPS = ROOT / "benchmarks" / "gpu_check_steps.py"  # the steps run in a subprocess of their own
sys.path.insert(0, str(ROOT))
from siqa.files import atomic_write_text  # noqa: E402
from siqa.runfolder import RunFolder, SplitFolder  # noqa: E402

STEPS = ("user", "tests", "throughput", "resume", "nss", "fused", "parity", "protocol")
DEFAULT_STEPS = STEPS[:-1]  # the protocol's 40-epoch curves: asked for by name
ESTIMATE_S = {"user": 45, "tests": 60, "throughput": 110, "resume": 45, "nss": 35, "fused": 90,
              "parity": 90, "protocol": 170}
WHAT = {"user": "train.py device=auto 2 epochs, evaluate.py == metrics.json, predict.py",
        "tests": "pytest -m cuda tests",
        "throughput": "eager/graph x tf32/bf16, 10 splits at once; the 500-epoch projection",
        "resume": "SIGKILL in epoch 2, --resume, metrics identical",
        "nss": "NSS targets on the device vs the CPU",
        "fused": "1 / 10 / 20 splits fused, full and partial rounds, vs on streams; the 10-split projection",
        "parity": "3 splits of the demo run: bf16 graph - fp32 eager per split vs fp32 run-to-run noise",
        "protocol": "the paper's protocol on the full-size demo, 40 epochs x 2 normalisations"}
QUICK_ESTIMATE_S = {"user": 15, "tests": 10, "throughput": 20, "resume": 20, "nss": 5, "fused": 30,
                    "parity": 30, "protocol": 20}
FUSED_SPLITS = (1, 10, 20)
QUICK_STEP_CAP_S = 240  # --quick: what a step with a deadline may take
PARITY_SEEDS = 3
BUDGET_S = 480  # an outer limit of 9 minutes, less 60 s for the start and the transfers
MIN_START_S = 10  # no subprocess starts with less left: it could not do anything useful
REPORT_RESERVE_S = 2  # left after a subprocess's timeout, to write the reports

# evaluate.py must give the test metrics train.py wrote (docs/decisions.md): same checkpoint,
# same pairs, same numerics. Equal scores give equal metrics bit for bit; a scoring kernel that
# differs only in rounding moves float32 scores by ~1e-7 relative, i.e. an RMSE of ~20 by
# ~2e-6. So 1e-6 lets through only float64 noise of the metrics' own arithmetic.
EVALUATE_TOLERANCE = 1e-6
HEADLINE = ("srocc", "plcc", "krocc", "rmse")

# LIVE 3D Phase I: 365 pairs x 364 patches of 640x360 views; 60 / 20 % of them train / validate
LIVE1_TRAIN_PATCHES, LIVE1_VAL_PATCHES, PROTOCOL_EPOCHS = 79_716, 26_572, 500
THROUGHPUT_VARIANTS = [("eager", "tf32"), ("eager", "bf16"), ("graph", "tf32"), ("graph", "bf16")]
CONCURRENT_SPLITS = 10
# One launch a step (graph) is what lets the splits' kernels overlap: eager steps are bound
# by the host's launches, which interleaving does not reduce.
CONCURRENT_VARIANT = ("graph", "bf16")
USER_EPOCHS, PAPER_EPOCHS = 2, 40
PAPER = ["train.optimizer=sgd", "train.lr=0.001", "train.lr_step=0", "train.batch_size=128"]


# --------------------------------------------------------------------------- helpers
class StepFailed(Exception):
    pass


class OutOfTime(Exception):
    """The budget left cannot start another subprocess: the step is recorded as skipped."""


def child_env():
    """The caller's environment with the repository prepended to PYTHONPATH. The caller's
    entries are kept (made absolute: the children run in the repository), because a bare box
    takes carried wheels as `pip install --target DIR` + PYTHONPATH=DIR."""
    kept = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *kept])}


def python(*args):
    return [sys.executable, *map(str, args)]


def tail(text, lines=3):
    return " | ".join(text.strip().splitlines()[-lines:])[-400:]


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
    atomic_write_text(manifest, "\n".join(rows) + "\n")
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


# --------------------------------------------------------------------------- the check
class Check:
    """What the steps share: the folders, the budget's clock, the subprocesses running now
    (for the signal handler to kill) and the report, saved whenever it changes."""

    def __init__(self, out, work, device, quick, budget, started=None):
        self.out, self.work, self.device, self.quick, self.budget = out, work, device, quick, budget
        self.started = time.perf_counter() if started is None else started
        self.procs, self.step, self.step_started = set(), None, None
        self.report = {"environment": environment(device), "quick": quick, "budget_s": budget,
                       "work": str(work), "steps": {}}
        self.tiny = tiny_database(work / "tinydb") if quick else None

    def left(self):
        return self.budget - (time.perf_counter() - self.started)

    def data(self, demo_size="small"):
        """The database overrides: the demo (of `demo_size`), or with --quick the tiny one."""
        if self.quick:
            return ["dataset.name=csv", f"dataset.manifest={self.tiny}",
                    f"nss.cache_dir={self.work / 'cache'}", "nss.workers=1"]
        return [f"dataset.demo_size={demo_size}"]

    def run_folder(self, name):
        """The run folder of this check's run `name` (its out_dir in train_args)."""
        return RunFolder(self.work / "runs" / name)

    def train_args(self, name, *extra, device=None):
        """train.py's overrides for a run of this check: its folders in the work folder."""
        return [f"device={device or self.device}", f"out_dir={self.run_folder(name).path}",
                f"tensorboard.dir={self.work / 'tensorboard'}", *self.data(), *extra]

    def side_by_side_network(self):
        """The network of the steps that train several runs at once: the paper's, or with
        --quick the `tiny` one (the same inputs, outputs and recipe in 20k parameters)."""
        return ["model.name=tiny"] if self.quick else []

    def start(self, cmd, log, want_s):
        """Start `cmd` in its own process group, its output going to OUT/logs/`log`.log;
        returns (process, timeout). Refused (OutOfTime) with under MIN_START_S left."""
        left = self.left()
        if left < MIN_START_S:
            raise OutOfTime(f"{left:.0f} s of the budget left before {log}: not started")
        timeout = min(want_s, left - REPORT_RESERVE_S)
        path = self.out / "logs" / f"{log}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=child_env())
        self.procs.add(proc)
        self.step["commands"].append({"log": log, "left_s": round(left, 1), "timeout_s": round(timeout, 1)})
        self.save()  # what runs now, should this process be killed in a way it cannot catch
        return proc, timeout

    def finish(self, proc, timed_out=False):
        """Kill what is left of `proc`'s group and forget it."""
        if timed_out or proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.procs.discard(proc)

    def run(self, cmd, log, want_s):
        """Run `cmd` to its end or its timeout; returns (returncode or 'timeout', its output)."""
        proc, timeout = self.start(cmd, log, want_s)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        self.finish(proc, timed_out=rc == "timeout")
        self.step["commands"][-1]["rc"] = rc
        return rc, self.log(log)

    def log(self, name):
        return (self.out / "logs" / f"{name}.log").read_text(errors="replace")

    def check(self, rc, text, what):
        if rc != 0:
            raise StepFailed(f"{what}: {'timed out' if rc == 'timeout' else f'exit {rc}'}: {tail(text)}")

    def save(self):
        self.report["total_s"] = round(time.perf_counter() - self.started, 1)
        atomic_write_text(self.out / "gpu_check.json", json.dumps(self.report, indent=1) + "\n")
        atomic_write_text(self.out / "gpu_check.md", markdown(self.report))

    def interrupted(self, signum, frame):
        """SIGTERM / SIGINT: kill the subprocesses, record the step, write the reports, exit."""
        for proc in list(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.step is not None:
            self.step.update(status="interrupted", error=f"{signal.Signals(signum).name} during the step",
                             seconds=round(time.perf_counter() - self.step_started, 1))
        self.save()
        print(f"\n{signal.Signals(signum).name}: reports written to {self.out}", flush=True)
        os._exit(128 + signum)


# --------------------------------------------------------------------------- steps
def step_user(check, r):
    run = check.run_folder("user").single
    train = python("train.py", *check.train_args("user", f"train.epochs={USER_EPOCHS}", device="auto"))
    rc, log = check.run(train, "user_train", 120 if check.quick else 300)
    check.check(rc, log, "train.py")
    trained = json.loads(run.metrics.read_text())
    r["device_used"] = trained["protocol"]["device"]
    r["test_srocc"] = trained["test"]["srocc"]
    print(f"  train.py device=auto, {USER_EPOCHS} epochs: ran on {r['device_used']}; test SROCC {r['test_srocc']:.4f}")
    if check.device == "cuda" and not r["device_used"].startswith("cuda"):
        raise StepFailed(f"device=auto did not choose the GPU: {r['device_used']}")
    evaluation = SplitFolder(run.path / "eval")  # evaluate.py --out: laid out as a split's folder
    rc, log = check.run(python("evaluate.py", "--checkpoint", run.best, "--out", evaluation.path),
                        "user_evaluate", 120)
    check.check(rc, log, "evaluate.py")
    evaluated = json.loads(evaluation.metrics.read_text())["test"]
    r["evaluate_max_diff"] = max(abs(trained["test"][k] - evaluated[k]) for k in HEADLINE)
    print(f"  evaluate.py: test SROCC {evaluated['srocc']:.4f}, largest difference from metrics.json "
          f"{r['evaluate_max_diff']:.2e} (tolerance {EVALUATE_TOLERANCE:.0e})")
    if r["evaluate_max_diff"] > EVALUATE_TOLERANCE:
        raise StepFailed(f"evaluate.py's test metrics differ from the run's by {r['evaluate_max_diff']:.2e}")
    manifest = check.tiny if check.quick else ROOT / "data" / "demo" / "manifest.csv"
    first = dict(zip(*(line.split(",") for line in manifest.read_text().splitlines()[:2])))
    rc, log = check.run(python("predict.py", "--checkpoint", run.best,
                               manifest.parent / first["left"], manifest.parent / first["right"]),
                        "user_predict", 60)
    check.check(rc, log, "predict.py")
    r["predict_score"] = float(re.findall(r"\t(-?[\d.]+(?:e-?\d+)?)$", log, re.M)[-1])
    print(f"  predict.py on {first['left']}: {r['predict_score']:.4f}")


def step_tests(check, r):
    cmd = python("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "cuda", "tests")
    rc, log = check.run(cmd, "tests", 240 if not check.quick else 60)
    r["summary"] = next((line for line in reversed(log.strip().splitlines()) if " in " in line), "(no summary)")
    r.update({k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", r["summary"])})
    print(f"  pytest -m cuda: {r['summary']}")
    if rc not in (0, 5):  # 5: nothing collected
        raise StepFailed(f"pytest: {r['summary']}")


def step_throughput(check, r):
    script = ROOT / "benchmarks" / "train_throughput.py"
    if check.quick:  # a smoke test on small synthetic data
        size = ["--steps", 2, "--warmup", 1, "--pairs", 4, "--val-pairs", 4, "--min-seconds", 0]
    else:  # chunks of 100 steps, at least 2 s after the warm-up
        size = ["--steps", 100, "--min-seconds", 2]
    if check.device == "cpu":  # graph needs CUDA, and tf32 / bf16 are CUDA numerics here
        variants, concurrent = [(1, "eager", "fp32")], (2, "eager", "fp32")
    else:
        variants, concurrent = [(1, *v) for v in THROUGHPUT_VARIANTS], (CONCURRENT_SPLITS, *CONCURRENT_VARIANT)
    rates = r.setdefault("rates", {})
    for splits, step, precision in [*variants, concurrent]:
        name = f"{step}/{precision}" if splits == 1 else f"concurrent x{splits} {step}/{precision}"
        path = check.work / f"throughput_{splits}_{step}_{precision}.json"
        path.unlink(missing_ok=True)
        rc, log = check.run(python(script, "--device", check.device, "--splits", splits, "--step", step,
                                   "--precision", precision, *size, "--json", path),
                            f"throughput_{splits}_{step}_{precision}", 90)
        rates[name] = (json.loads(path.read_text()) if rc == 0 and path.is_file()
                       else {"failed": f"{rc}: {tail(log, 1)}"})
        rate = rates[name].get("patch_pairs_per_s")
        print(f"  {name:<28} " + (f"{rate:>12,.0f} patch pairs/s ({rates[name]['timed_steps']} steps in "
                                  f"{rates[name]['timed_s']:.1f} s)" if rate else f"failed ({rates[name]['failed']})"))
    if not any(v.get("patch_pairs_per_s") for v in rates.values()):
        raise StepFailed("no variant ran")
    r["projection"] = projection(rates)


def projection(rates):
    """The 500-epoch LIVE-I-sized protocol from the fastest one-split rate and, for 10 splits,
    the concurrent one where it was measured."""
    ok = {k: v for k, v in rates.items() if v.get("patch_pairs_per_s") and not k.startswith("concurrent")}
    if not ok:
        return None
    best = max(ok, key=lambda k: ok[k]["patch_pairs_per_s"])
    rate = ok[best]["patch_pairs_per_s"]
    score_rate = ok[best].get("val_patch_pairs_per_s") or 3 * rate  # a forward only: ~3x where unmeasured
    conc = next((v.get("patch_pairs_per_s") for k, v in rates.items()
                 if k.startswith(f"concurrent x{CONCURRENT_SPLITS} ")), None)
    one, ten = project(rate, score_rate), project(rate, score_rate, CONCURRENT_SPLITS, conc)
    print(f"  projection from {best}: 500 epochs of a LIVE-I-sized split {one / 60:.1f} min; "
          f"{CONCURRENT_SPLITS} splits {ten / 60:.1f} min ({'concurrent' if conc else 'one after another'})")
    return {"variant": best, "patch_pairs_per_s": rate, "val_patch_pairs_per_s": score_rate,
            "one_split_min": one / 60, "ten_splits_min": ten / 60, "ten_concurrent": bool(conc)}


def step_resume(check, r):
    r["epochs"] = epochs = 4 if check.quick or check.device == "cpu" else 20
    extra = [f"train.epochs={epochs}", "train.deterministic=true", "train.tf32=false",
             "train.checkpoint_every=1", "train.scatter_every=1000"]
    rc, log = check.run(python("train.py", *check.train_args("resume_whole", *extra)), "resume_whole", 240)
    check.check(rc, log, "uninterrupted run")
    cut = check.run_folder("resume_cut").single  # a run of one split: its own split folder
    proc, timeout = check.start(python("train.py", *check.train_args("resume_cut", *extra)), "resume_cut", 240)
    deadline = time.time() + timeout
    while not cut.last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    check.finish(proc, timed_out=True)  # SIGKILL: last.pt of epoch 1 is there, epoch 2 is running
    if not cut.last.exists():
        raise StepFailed(f"the run to kill wrote no last.pt: {tail(check.log('resume_cut'))}")
    if cut.metrics.exists():
        raise StepFailed("the run ended before it could be killed (raise the epochs)")
    rc, log = check.run(python("train.py", "--resume", f"out_dir={cut.path}"), "resume_resumed", 240)
    check.check(rc, log, "resumed run")
    after = re.search(r"after epoch (\d+)", log)
    r["killed_after_epoch"] = int(after.group(1)) if after else None
    got = json.loads(cut.metrics.read_text())
    want = json.loads(check.run_folder("resume_whole").single.metrics.read_text())
    for m in (got, want):  # the protocol cards differ by design (out_dir, wall time)
        m.pop("protocol", None)
    r["max_diff"], r["identical"] = numbers_diff(got, want), got == want
    print(f"  killed after epoch {r['killed_after_epoch']} of {epochs}, resumed: metrics "
          + ("identical" if r["identical"] else f"differ (largest {r['max_diff']:.2e})"))
    if not r["identical"]:
        raise StepFailed(f"resumed metrics differ from the uninterrupted run (largest {r['max_diff']:.2e})")


def step_nss(check, r):
    n = 2 if check.quick else 32
    # --quick: 2 pairs of the small demo, built in the work folder from the stereodemo wheel
    # (2-3 s): the quick step that needs a carried wheel in a subprocess, as the box's steps do
    data = (["dataset.name=demo", f"dataset.root={check.work / 'demo'}", f"nss.cache_dir={check.work / 'cache'}"]
            if check.quick else check.data("full"))
    rc, log = check.run(python(SUBPROCESS_STEPS, "nss", check.device, n, *data), "nss", 180)
    check.check(rc, log, "NSS")
    r.update(json.loads(re.search(r"^RESULT (.*)$", log, re.M).group(1)))
    print(f"  {n} pairs of {r['view'][0]}x{r['view'][1]}: max |{check.device} - cpu| = {r['max_abs_diff']:.2e}; "
          f"{r['device_pairs_per_s']:.1f} pairs/s on {check.device}, {r['cpu_pairs_per_s']:.1f} on the CPU")
    if r["max_abs_diff"] > 1e-8:
        raise StepFailed(f"NSS on {check.device} differs from the CPU by {r['max_abs_diff']:.2e}")


def step_deadline(check, name):
    """When the step must be done: its start plus its estimate on the GPU (its
    subprocesses' timeouts are cut to what is left of it); --quick: QUICK_STEP_CAP_S (CPU
    machines differ more than their estimates say)."""
    return check.step_started + (QUICK_STEP_CAP_S if check.quick else ESTIMATE_S[name])


def run_within(check, cmd, log, deadline):
    """check.run with a timeout of what is left before `deadline`; refused (OutOfTime) when
    nothing is left."""
    left = deadline - time.perf_counter()
    if left < 1:
        raise OutOfTime(f"the step's estimate is spent before {log}: not started")
    return check.run(cmd, log, left)


def step_fused(check, r):
    """The splits fused (benchmarks/fused_throughput.py: unequal splits like the stored
    LIVE-I ones, full and partial rounds each timed for >= 2 s after warm-up, the rounds
    captured as CUDA graphs on CUDA) against the same splits on streams; patch pairs/s
    summed over the splits. The benchmark writes its JSON after each K: what a timeout cuts
    short still counts. Every subprocess ends within the step's estimate."""
    deadline = step_deadline(check, "fused")
    fused = ROOT / "benchmarks" / "fused_throughput.py"
    streams = ROOT / "benchmarks" / "train_throughput.py"
    size = ["--min-seconds", 0, "--warmup", 1, "--batch", 8] if check.quick else ["--min-seconds", 2, "--warmup", 3]
    if check.device == "cuda":
        runs = [("bf16", "graph", FUSED_SPLITS), ("tf32", "graph", FUSED_SPLITS[1:2])]
    else:
        runs = [("fp32", "eager", (2,))]  # full, partial and tail rounds
    rates, partial, epoch = r.setdefault("fused", {}), r.setdefault("partial", {}), r.setdefault("epoch", {})
    failures = []
    for precision, step, splits in runs:
        path = check.work / f"fused_{precision}.json"
        path.unlink(missing_ok=True)
        rc, log = run_within(check, python(fused, "--device", check.device, "--splits", ",".join(map(str, splits)),
                                           "--precision", precision, "--step", step, "--only", "fused", *size,
                                           "--json", path), f"fused_{precision}", deadline)
        measured = json.loads(path.read_text())["rates"] if path.is_file() else {}
        for k, v in measured.items():
            name = f"x{k} {precision} {step}"
            rates[name], partial[name], epoch[name] = v["fused"], v["fused_partial"], v["fused_epoch"]
            print(f"  fused x{k:<3} {precision:<5} {step:<6} full rounds {v['fused']:>10,.0f} patch pairs/s; "
                  f"partial rounds {v['fused_partial'] or 0:>10,.0f}; LIVE-I epoch {v['fused_epoch'] or 0:>10,.0f}")
        check.save()
        if rc != 0:
            failures.append(f"fused {precision}: {'timed out' if rc == 'timeout' else f'exit {rc}'} after "
                            f"{len(measured)} of {len(splits)} K: {tail(log, 1)}")
    if check.device == "cuda" and not check.quick:  # the same splits on streams, graph-captured
        splits = FUSED_SPLITS[1]
        path = check.work / f"streams_{splits}.json"
        rc, log = run_within(check, python(streams, "--device", "cuda", "--splits", splits, "--step", "graph",
                                           "--precision", "bf16", "--steps", 50, "--min-seconds", 2,
                                           "--json", path), f"streams_{splits}", deadline)
        rate = json.loads(path.read_text())["patch_pairs_per_s"] if rc == 0 and path.is_file() else None
        r.setdefault("streams", {})[f"x{splits} bf16 graph"] = rate
        print(f"  streams x{splits:<3} bf16  graph  " + (f"{rate:>12,.0f} patch pairs/s" if rate else "failed"))
    ten, one = epoch.get(f"x{FUSED_SPLITS[1]} bf16 graph"), rates.get("x1 bf16 graph")
    if ten and one:
        r["projection_ten_min"] = project(one, 3 * one, FUSED_SPLITS[1], ten) / 60
        print(f"  500 epochs of {FUSED_SPLITS[1]} LIVE-I-sized splits fused: {r['projection_ten_min']:.1f} min")
    if failures:
        raise StepFailed("; ".join(failures))


def parity_verdict(first, again, other):
    """Each split against itself: `other` - `first` (e.g. bf16 graph minus fp32 eager, same
    split and seed) against the fp32 run-to-run noise `again` - `first`. True when every
    split's |difference| is within the largest |noise| (or is 0), False when one is not;
    None when the fp32 runs repeat exactly (no noise to compare with) and a difference is not 0."""
    diff = max(abs(o - f) for f, o in zip(first, other))
    noise = max(abs(a - f) for f, a in zip(first, again))
    if diff == 0:
        return True, diff, noise
    return (None if noise == 0 else diff <= noise), diff, noise


def step_parity(check, r):
    """The default demo run (PARITY_SEEDS splits) three times side by side: fp32 eager, fp32
    eager again (the run-to-run noise of the same splits and seeds) and bf16 graph; each
    split's test SROCC in bf16 minus its fp32 one against that noise (`parity_verdict`). On
    the CPU the third run is fp32 eager once more (a smoke test of the step)."""
    deadline = step_deadline(check, "parity")
    epochs = ["train.epochs=2"] if check.quick else []
    fp32 = ["train.step=eager", "train.amp=false", "train.tf32=false"]
    other = ("bf16 graph", ["train.step=graph", "train.amp=true"]) if check.device == "cuda" else \
        ("fp32 eager third", fp32)
    variants = {"fp32 eager": fp32, "fp32 eager again": fp32, other[0]: other[1]}
    procs = []
    for name, extra in variants.items():  # side by side: one device, three processes
        log = f"parity_{name.replace(' ', '_')}"
        args = check.train_args(log, f"train.repeats={PARITY_SEEDS}", "train.concurrent_splits=true",
                                *check.side_by_side_network(), *epochs, *extra)
        if deadline - time.perf_counter() < 1:
            raise OutOfTime(f"the step's estimate is spent before {log}: not started")
        procs.append((name, *check.start(python("train.py", *args), log, deadline - time.perf_counter())))
    for name, proc, timeout in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            pass
        check.finish(proc, timed_out=proc.poll() is None)
        summary = check.run_folder(f"parity_{name.replace(' ', '_')}").summary
        if not summary.is_file():
            raise StepFailed(f"{name}: no summary ({tail(check.log('parity_' + name.replace(' ', '_')), 1)})")
        srocc = json.loads(summary.read_text())["srocc"]
        r[name] = {"values": srocc["values"], "median": srocc["median"]}
        print(f"  {name:<16} test SROCC per split: " + ", ".join(f"{v:.4f}" for v in srocc["values"]))
    r["parity"], r["largest_difference"], r["largest_noise"] = parity_verdict(
        r["fp32 eager"]["values"], r["fp32 eager again"]["values"], r[other[0]]["values"])
    print(f"  {other[0]} minus fp32 eager, split by split: largest |difference| {r['largest_difference']:.4f}, "
          f"fp32 run-to-run noise {r['largest_noise']:.4f}: parity {r['parity']}")


def protocol_curves(check, r, epochs):
    """What the protocol's logs say so far (the report keeps it if the check is cut short)."""
    for norm in ("reference", "contrast"):
        text = check.log(f"protocol_{norm}")
        curve, secs = val_curve(text), epoch_seconds(text)
        metrics = check.run_folder(f"protocol_{norm}").single.metrics
        test = json.loads(metrics.read_text())["test"] if metrics.is_file() else None
        r[norm] = {"epochs": epochs, "epochs_done": len(curve), "val_srocc": curve,
                   "mean_epoch_s": sum(secs) / len(secs) if secs else None,
                   "test": {k: test[k] for k in HEADLINE} if test else None}


def step_protocol(check, r):
    epochs = 2 if check.quick else PAPER_EPOCHS
    t0 = time.perf_counter()
    rc, log = check.run(python(SUBPROCESS_STEPS, "prepare", check.device, *check.data("full")), "protocol_prepare", 240)
    check.check(rc, log, "building the database and its NSS targets")
    print(f"  {'tiny' if check.quick else 'full-size demo'} database and NSS targets ready: "
          f"{time.perf_counter() - t0:.1f} s")
    procs = []
    for norm in ("reference", "contrast"):  # side by side: one GPU, two processes
        args = check.train_args(f"protocol_{norm}", *check.data("full"), *PAPER, *check.side_by_side_network(),
                                f"train.epochs={epochs}",
                                f"patches.normalisation={norm}", "train.checkpoint_every=10",
                                "train.scatter_every=20")
        procs.append(check.start(python("train.py", *args), f"protocol_{norm}", 3600))
    deadline = time.time() + min(timeout for _, timeout in procs)
    while time.time() < deadline and any(p.poll() is None for p, _ in procs):
        time.sleep(1)
        protocol_curves(check, r, epochs)
    for (proc, _), norm in zip(procs, ("reference", "contrast")):
        timed_out = proc.poll() is None
        check.finish(proc, timed_out)
        protocol_curves(check, r, epochs)
        r[norm].update(timed_out=timed_out, returncode=proc.returncode)
    for norm in ("reference", "contrast"):
        o = r[norm]
        best = max((s for _, s in o["val_srocc"] if s is not None), default=None)
        print(f"  {norm:<9}: {o['epochs_done']}/{epochs} epochs"
              + (f", {o['mean_epoch_s']:.2f} s an epoch" if o["mean_epoch_s"] else "")
              + (f", best val SROCC {best:.4f}" if best is not None else "")
              + (f", test SROCC {o['test']['srocc']:.4f}" if o["test"] else " (not finished: no test)"))
    if all(r[norm]["epochs_done"] == 0 for norm in ("reference", "contrast")):
        raise StepFailed("no epoch finished: see logs/protocol_*.log")


# --------------------------------------------------------------------------- report
def figures_line(name, res):
    """The step's figures in one line of the table (from a result that may be partial)."""
    def get(key, fmt):
        return format(res[key], fmt) if res.get(key) is not None else "?"

    if name == "user":
        return (f"ran on {res.get('device_used', '?')}; test SROCC {get('test_srocc', '.3f')}; evaluate.py "
                f"differs by {get('evaluate_max_diff', '.1e')}; predict.py {get('predict_score', '.3f')}")
    if name == "tests":
        return res.get("summary", "")
    if name == "throughput":
        line = "; ".join(f"{k} {v['patch_pairs_per_s']:,.0f}/s" for k, v in res.get("rates", {}).items()
                         if v.get("patch_pairs_per_s"))
        p = res.get("projection")
        return line + (f"; 500 epochs: 1 split {p['one_split_min']:.1f} min, 10 splits "
                       f"{p['ten_splits_min']:.1f} min" if p else "")
    if name == "resume":
        return (f"killed after epoch {res.get('killed_after_epoch', '?')}/{res.get('epochs', '?')}; "
                + ("not compared" if "identical" not in res else "metrics identical" if res["identical"]
                   else f"largest difference {res['max_diff']:.1e}"))
    if name == "nss":
        return (f"max diff {get('max_abs_diff', '.1e')}; {get('device_pairs_per_s', '.1f')} pairs/s "
                f"(CPU {get('cpu_pairs_per_s', '.1f')})")
    if name == "fused":
        line = "; ".join(f"fused {k} {v:,.0f}/s (partial rounds {res.get('partial', {}).get(k) or 0:,.0f}/s)"
                         for k, v in res.get("fused", {}).items())
        line += "".join(f"; streams {k} {v:,.0f}/s" for k, v in res.get("streams", {}).items() if v)
        return line + (f"; 10 splits, 500 epochs: {res['projection_ten_min']:.1f} min"
                       if res.get("projection_ten_min") else "")
    if name == "parity":
        medians = "; ".join(f"{k} median {v['median']:.3f}" for k, v in res.items() if isinstance(v, dict))
        return medians + (f"; largest difference {res['largest_difference']:.4f} vs fp32 noise "
                          f"{res['largest_noise']:.4f}: parity {res['parity']}" if "parity" in res else "")
    if name == "protocol":
        return "; ".join(f"{k}: {v['epochs_done']}/{v['epochs']} epochs, best val SROCC "
                         f"{max((s for _, s in v['val_srocc'] if s is not None), default=float('nan')):.3f}"
                         + (f", test {v['test']['srocc']:.3f}" if v["test"] else "") for k, v in res.items())
    return ""


def markdown(report):
    env = report["environment"]
    lines = [f"# gpu_check: {env['device_name']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, Python {env['python']}, "
             f"{'quick' if report['quick'] else 'full'} run, {report.get('total_s', 0):.0f} s of "
             f"{report['budget_s']:.0f}", "",
             "| step | status | seconds | figures |", "|---|---|---|---|"]
    for name, step in report["steps"].items():
        figures = figures_line(name, step.get("result") or {})
        if step.get("error"):
            figures = f"{step['error']}" + (f" (so far: {figures})" if step.get("result") else "")
        lines.append(f"| {name} | {step['status']} | {step.get('seconds', 0):.0f} | {figures.replace('|', '/')} |")
    protocol = report["steps"].get("protocol", {}).get("result")
    if protocol:
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
            "pythonpath": os.environ.get("PYTHONPATH", ""),
            "packages": {name: importlib.util.find_spec(name) is not None
                         for name in ("stereodemo", "dtcwt", "openpyxl", "pytest", "tensorboard",
                                      "matplotlib", "scipy", "skimage")}}


def plan(chosen, quick, budget):
    estimates = QUICK_ESTIMATE_S if quick else ESTIMATE_S
    for name in chosen:
        print(f"  {name:<11}{estimates[name]:>4} s  {WHAT[name]}")
    total = sum(estimates[name] for name in chosen)
    print(f"  {'total':<11}{total:>4} s of a {budget:.0f} s budget ({'quick, CPU' if quick else 'one H200'} estimates)")
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="the reports and logs: what must come back")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="every step as a smoke test")
    parser.add_argument("--skip", default="", help="steps to leave out, comma-separated")
    parser.add_argument("--only", default="", help="the only steps to run, comma-separated")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--work", default=str(ROOT / "data" / "gpu_check"),
                        help="run folders, the tiny database, caches (its runs/ is emptied first)")
    parser.add_argument("--plan", action="store_true", help="print the steps and their estimates; run nothing")
    args = parser.parse_args()
    started = time.perf_counter()  # the budget counts from here
    unknown = set(filter(None, (args.only + "," + args.skip).split(","))) - set(STEPS)
    if unknown:
        sys.exit(f"unknown step(s) {', '.join(sorted(unknown))}: the steps are {', '.join(STEPS)}")
    wanted = args.only.split(",") if args.only else DEFAULT_STEPS
    chosen = [s for s in STEPS if s in wanted and s not in args.skip.split(",")]
    if args.plan:
        plan(chosen, args.quick, args.budget)
        return 0
    out, work = Path(args.out_dir).resolve(), Path(args.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in ("runs", "tensorboard"):  # train.py refuses an out_dir that holds a run
        shutil.rmtree(work / old, ignore_errors=True)
    check = Check(out, work, args.device, args.quick, args.budget, started)
    signal.signal(signal.SIGTERM, check.interrupted)
    signal.signal(signal.SIGINT, check.interrupted)
    env = check.report["environment"]
    print(f"gpu_check on {env['device_name']} (torch {env['torch']}), steps: {', '.join(chosen)}; "
          f"reports in {out}, runs in {work}")
    for name in chosen:
        print(f"[{name}]", flush=True)
        check.step = check.report["steps"][name] = {"status": "running", "result": {}, "commands": []}
        check.step_started = time.perf_counter()
        check.save()
        try:
            globals()[f"step_{name}"](check, check.step["result"])
            check.step["status"] = "ok"
        except OutOfTime as err:
            check.step.update(status="skipped", error=str(err))
        except StepFailed as err:
            check.step.update(status="failed", error=str(err))
        except Exception as err:  # a bug in this script must not lose the other steps
            check.step.update(status="failed", error=f"{type(err).__name__}: {err}")
        for proc in list(check.procs):  # e.g. a protocol run whose twin could not start
            check.finish(proc, timed_out=True)
        check.step["seconds"] = round(time.perf_counter() - check.step_started, 1)
        if check.step["status"] != "ok":
            print(f"  {check.step['status'].upper()}: {check.step['error']}")
        check.step = None
        check.save()
        sys.stdout.flush()
    print()
    print(markdown(check.report))
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    return 0 if all(s["status"] == "ok" for s in check.report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
