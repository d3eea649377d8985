"""benchmarks/gpu_check.py: its arithmetic and parsing against hand-computed values, its plan
and budget rules, and runs on the CPU (--quick: the tiny synthetic database): one to the
end, one cut by SIGTERM / SIGINT, one by a tiny budget. Every subprocess of the full run
imports a probe `sitecustomize` that exists only on the caller's PYTHONPATH, which shows that
the check keeps that path (the way a bare GPU box takes its carried wheels)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, load_script

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PROBE = """import os, sys
with open(os.path.join(os.environ["GPU_CHECK_PROBE"], f"{os.getpid()}.txt"), "w") as f:
    f.write(" ".join(sys.orig_argv))
"""


def load(name):
    return load_script(f"benchmarks/{name}.py")


@pytest.fixture(scope="module")
def gpu_check():
    return load("gpu_check")


def probe_env(tmp_path):
    """PYTHONPATH = a folder holding a sitecustomize that writes each process's pid and argv
    into seen/: what a subprocess of the check sees of the caller's PYTHONPATH."""
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(PROBE)
    (tmp_path / "seen").mkdir()
    return {**os.environ, "PYTHONPATH": str(tmp_path / "probe"), "GPU_CHECK_PROBE": str(tmp_path / "seen"),
            "OMP_NUM_THREADS": "1"}


def seen(tmp_path):
    return {int(p.stem): p.read_text() for p in (tmp_path / "seen").iterdir()}


def start_check(tmp_path, *flags):
    return subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "out"), "--device", "cpu", "--quick",
                             "--work", str(tmp_path / "work"), *flags], cwd=ROOT, env=probe_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def alive(pid):
    """Whether `pid` runs (a zombie that no one has reaped yet does not)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def reports(tmp_path):
    """The JSON report (parsed) and the Markdown one, as they are on disk now."""
    return (json.loads((tmp_path / "out" / "gpu_check.json").read_text()),
            (tmp_path / "out" / "gpu_check.md").read_text())


def test_projection_of_the_500_epoch_protocol(gpu_check):
    # 79,716 training patch pairs at 100k/s + 26,572 scored at 300k/s, 500 times
    one = 500 * (79_716 / 100_000 + 26_572 / 300_000)
    assert gpu_check.project(100_000, 300_000) == pytest.approx(one)
    assert gpu_check.project(100_000, 300_000, splits=10) == pytest.approx(10 * one)
    concurrent = 500 * (10 * 79_716 / 250_000 + 10 * 26_572 / 300_000)
    assert gpu_check.project(100_000, 300_000, 10, aggregate_rate=250_000) == pytest.approx(concurrent)


def test_parity_is_each_split_against_itself_and_the_fp32_noise(gpu_check):
    fp32, again = [0.80, 0.70, 0.60], [0.81, 0.70, 0.58]  # noise up to 0.02
    assert gpu_check.parity_verdict(fp32, again, [0.79, 0.71, 0.61]) == (True, pytest.approx(0.01),
                                                                         pytest.approx(0.02))
    assert gpu_check.parity_verdict(fp32, again, [0.80, 0.70, 0.65])[0] is False  # split 3 moved 0.05
    assert gpu_check.parity_verdict(fp32, fp32, [0.80, 0.70, 0.61])[0] is None  # no noise to compare
    assert gpu_check.parity_verdict(fp32, fp32, fp32)[0] is True


def test_fused_benchmark_splits_are_unequal_as_the_stored_live1_ones():
    """10 splits: the stored LIVE-I splits' spread of full batches (611 to 639 of 128) over a
    base of 4, so an epoch has full rounds, partial rounds and tails; a LIVE-I-sized epoch
    of 10 splits has 611 full rounds and 29 others."""
    fused = load("fused_throughput")
    sizes = fused.split_sizes(10, 128)
    assert min(n // 128 for n in sizes) == fused.PARTIAL_BASE and max(-(-n // 128) for n in sizes) == 4 + 29
    assert sizes == fused.split_sizes(10, 128) and len(set(n % 128 for n in sizes)) > 1
    assert fused.live1_rounds(10, 128)[:2] == (611, 29)
    assert [n // 8 for n in fused.split_sizes(10, 8)] == [n // 128 for n in sizes]  # any batch: the same rounds


def test_parses_train_py_epoch_lines(gpu_check):
    log = ("epoch 1/3 loss 2.0 (quality 1.0, nss 0.04) | val SROCC 0.5000 PLCC 0.6 RMSE 9.000 [1.5s]\n"
           "epoch 2/3 loss 1.0 (quality 0.5, nss 0.02) [0.5s]\n"
           "epoch 3/3 loss 0.9 (quality 0.4, nss 0.02) | val SROCC n/a PLCC n/a RMSE 9.000 [2.0s]\n")
    assert gpu_check.val_curve(log) == [(1, 0.5), (3, None)]
    assert gpu_check.epoch_seconds(log) == [1.5, 0.5, 2.0]
    assert gpu_check.numbers_diff({"a": [1, 2.5], "b": {"c": 3}}, {"a": [1, 2.0], "b": {"c": 3.25}}) == 0.5


def test_unknown_step_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--only", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown step" in proc.stderr


def test_plan_lists_the_steps_within_480_s_and_runs_nothing(tmp_path, gpu_check):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out"), "--plan"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^  (\w+)\s+(\d+) s", proc.stdout, re.M)
    assert [name for name, _ in rows] == ["user", "tests", "throughput", "resume", "nss", "fused",
                                          "parity", "total"]
    estimates = [int(s) for _, s in rows]
    assert sum(estimates[:-1]) == estimates[-1] <= 480
    # the default budget leaves at least 60 s under a 9-minute outer limit
    assert gpu_check.BUDGET_S <= 9 * 60 - 60
    assert sum(gpu_check.ESTIMATE_S[s] for s in gpu_check.DEFAULT_STEPS) <= gpu_check.BUDGET_S
    assert gpu_check.ESTIMATE_S["fused"] + gpu_check.ESTIMATE_S["parity"] <= 240  # --only fused,parity
    assert not (tmp_path / "out").exists()


def test_no_subprocess_starts_with_under_10_s_left(tmp_path, gpu_check):
    check = gpu_check.Check(tmp_path / "out", tmp_path / "work", "cpu", quick=False, budget=9.5)
    check.step = {"commands": []}
    with pytest.raises(gpu_check.OutOfTime):
        check.start([sys.executable, "-c", "pass"], "refused", 60)
    assert check.step["commands"] == [] and not (tmp_path / "out" / "logs" / "refused.log").exists()
    check.budget = 30  # its timeout is cut to what is left, less the time to write the reports
    rc, log = check.run([sys.executable, "-c", "print('ran')"], "ran", 600)
    assert rc == 0 and "ran" in log
    assert check.step["commands"][0]["timeout_s"] <= check.step["commands"][0]["left_s"] - 2 < 30


def test_subprocesses_keep_the_callers_pythonpath(gpu_check, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["deps", "/opt/other"]))
    assert gpu_check.child_env()["PYTHONPATH"].split(os.pathsep) == [str(ROOT), str(tmp_path / "deps"), "/opt/other"]


def test_docstring_preparation_is_what_the_rehearsal_runs(gpu_check):
    """scripts/rehearse_gpu_box.sh must follow the documented preparation word for word."""
    doc = gpu_check.__doc__.split("Preparation.")[1]
    commands = [line.strip() for line in doc.splitlines()
                if line.startswith("    ") and line.split()[0].split("=")[0] in ("bash", "python", "PYTHONPATH")]
    assert len(commands) == 3, commands
    script = (ROOT / "scripts" / "rehearse_gpu_box.sh").read_text().splitlines()
    for command in commands:
        assert any(line.startswith(command) for line in script), command


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`gpu_check.py OUT --device cpu --quick` to its end, every step (the default plan and the
    protocol), with the probe on PYTHONPATH."""
    import shutil

    tmp_path = tmp_path_factory.mktemp("quick")
    proc = start_check(tmp_path, "--only", "user,tests,throughput,resume,nss,fused,parity,protocol")
    stdout, stderr = proc.communicate(timeout=600)
    # the runs' checkpoints of the paper's network (2.4 GB) would stay on disk to the session's
    # end: the tests read the list of files written, kept in work/runs.txt
    runs = tmp_path / "work" / "runs"
    (tmp_path / "work" / "runs.txt").write_text(
        "\n".join(str(p.relative_to(runs)) for p in sorted(runs.rglob("*")) if p.is_file()) if runs.is_dir() else "")
    shutil.rmtree(runs, ignore_errors=True)
    return tmp_path, proc.returncode, stdout, stderr


def test_quick_cpu_run_to_the_end(quick_run):
    tmp_path, rc, stdout, stderr = quick_run
    assert rc == 0, (stdout[-3000:], stderr[-2000:])
    report, md = reports(tmp_path)
    steps = report["steps"]
    assert list(steps) == ["user", "tests", "throughput", "resume", "nss", "fused", "parity", "protocol"]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    user = steps["user"]["result"]
    assert user["device_used"].startswith("cpu") and user["evaluate_max_diff"] == 0.0
    assert isinstance(user["predict_score"], float)
    rates = steps["throughput"]["result"]["rates"]
    assert set(rates) == {"eager/fp32", "concurrent x2 eager/fp32"}
    assert rates["concurrent x2 eager/fp32"]["splits"] == 2 and rates["eager/fp32"]["timed_steps"] >= 2
    assert rates["eager/fp32"]["numerics"] == {"deterministic": True, "tf32": False, "cudnn_benchmark": False}
    assert steps["throughput"]["result"]["projection"]["one_split_min"] > 0
    assert steps["resume"]["result"]["identical"] is True
    assert steps["nss"]["result"]["max_abs_diff"] <= 1e-8
    assert steps["nss"]["result"]["view"] == [128, 96]  # the small demo, from the stereodemo wheel
    fused = steps["fused"]["result"]
    assert set(fused["fused"]) == set(fused["partial"]) == {"x2 fp32 eager"}
    assert all(v > 0 for v in [*fused["fused"].values(), *fused["partial"].values()])
    parity = steps["parity"]["result"]
    assert parity["parity"] is True and len(parity["fp32 eager"]["values"]) == 3  # the same run thrice
    assert parity["largest_difference"] == parity["largest_noise"] == 0.0
    for norm in ("reference", "contrast"):
        assert steps["protocol"]["result"][norm]["epochs_done"] == 2
    assert "| resume | ok |" in md and "| epoch | reference | contrast |" in md
    # the budget's rule held for every subprocess
    assert all(c["left_s"] >= 10 for s in steps.values() for c in s["commands"])


def test_quick_run_reports_folder_holds_only_reports_and_logs(quick_run):
    out = quick_run[0] / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md", "logs"]
    logs = list((out / "logs").iterdir())
    assert logs and all(p.suffix == ".log" and p.is_file() for p in logs)
    assert sum(p.stat().st_size for p in out.rglob("*")) < 1_000_000
    written = (quick_run[0] / "work" / "runs.txt").read_text().splitlines()
    assert "user/best.pt" in written  # the runs went to --work


def test_quick_run_subprocesses_saw_the_callers_pythonpath(quick_run):
    argvs = list(seen(quick_run[0]).values())
    for needle in ("train.py", "evaluate.py", "predict.py", "pytest", "train_throughput.py", "-c"):
        assert any(needle in argv for argv in argvs), (needle, argvs)


@pytest.mark.parametrize("signum, rc, steps", [(signal.SIGTERM, 143, "nss,protocol"),
                                               (signal.SIGINT, 130, "protocol")])
def test_a_signal_kills_the_step_and_keeps_the_reports(tmp_path, signum, rc, steps):
    proc = start_check(tmp_path, "--only", steps)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            steps = reports(tmp_path)[0]["steps"]
        except (OSError, ValueError):  # not written yet: an atomic write is never half there
            steps = {}
        if len(steps.get("protocol", {}).get("commands", [])) == 3:
            break
        time.sleep(0.2)
    time.sleep(1)  # both trainings of the protocol step are under way
    proc.send_signal(signum)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == rc, stdout[-2000:]
    report, md = reports(tmp_path)
    if "nss" in steps:
        assert report["steps"]["nss"]["status"] == "ok"  # written after the step that ended
    protocol = report["steps"]["protocol"]
    assert protocol["status"] == "interrupted" and signal.Signals(signum).name in protocol["error"]
    assert "| protocol | interrupted |" in md
    time.sleep(0.5)
    trainings = [pid for pid, argv in seen(tmp_path).items() if "train.py" in argv]
    assert len(trainings) == 2 and not any(alive(pid) for pid in trainings)  # killed with the check


def test_a_tiny_budget_skips_steps_instead_of_starting_them(tmp_path):
    proc = start_check(tmp_path, "--only", "nss,protocol", "--budget", "14")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, (stdout[-2000:], stderr[-2000:])
    steps = reports(tmp_path)[0]["steps"]
    assert steps["protocol"]["status"] == "skipped" and "not started" in steps["protocol"]["error"]
    assert all(c["left_s"] >= 10 for s in steps.values() for c in s["commands"])
    started = {c["log"] for s in steps.values() for c in s["commands"]}
    logs = tmp_path / "out" / "logs"  # none when the start (a loaded machine) took 4 s of the 14
    assert ({p.stem for p in logs.iterdir()} if logs.is_dir() else set()) == started  # nothing else ran
    assert not started & {"protocol_reference", "protocol_contrast"}


def test_train_throughput_applies_train_py_numerics(process_numerics):
    import torch

    throughput = load("train_throughput")
    cuda = torch.device("cuda")  # only the switches are set: no GPU needed
    for precision, tf32 in (("fp32", False), ("tf32", True), ("bf16", True)):
        amp, numerics = throughput.set_numerics(precision, cuda)
        assert numerics == {"deterministic": False, "tf32": tf32, "cudnn_benchmark": True}
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32 == tf32
        assert amp == (torch.bfloat16 if precision == "bf16" else None)
    assert throughput.set_numerics("fp32", torch.device("cpu"))[1]["cudnn_benchmark"] is False


def test_train_throughput_times_at_least_min_seconds():
    import torch

    throughput = load("train_throughput")
    chunks = []

    def epoch(order):
        chunks.append(len(order))
        time.sleep(0.05)

    order = torch.arange(128 * 10)
    steps, seconds = throughput.timed_chunks(epoch, order, 3, 4, 0.3, torch.device("cpu"))
    assert seconds >= 0.3 and steps == 4 * len(chunks) and len(chunks) >= 6
    assert set(chunks) == {4 * 128}  # whole chunks, wrapping round the 10 batches
    assert throughput.timed_chunks(epoch, order, 0, 4, 0.0, torch.device("cpu"))[0] == 4
