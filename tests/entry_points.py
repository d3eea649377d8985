"""The entry points run as a user runs them, without paying for Python's imports every time.

`run(script, args)` is `subprocess.run([python, script, *args], capture_output=True, text=True)`
whose process is a fork of a server that has imported torch, scipy and siqa once
(multiprocessing's forkserver, one per test process). The script runs as __main__ in a process
of its own, with its own sys.argv, working folder, environment, exit code, stdout and stderr,
and ends as the interpreter ends a script: SystemExit's code, an uncaught exception printed by
sys.excepthook (exit 1), non-daemon threads joined, atexit handlers run, the streams flushed.
What a child does not redo is the start-up: about 4 s of CPU per process on a 2-core machine
(torch, scipy, and torch._dynamo on a run's first optimizer), which came to a third of the
suite's CPU time when ~200 runs started a fresh interpreter each.

Not reproduced: what the interpreter reads only at its own start (PYTHONPATH, OMP_NUM_THREADS,
PYTHONHASHSEED) is the server's; a test that sets such a variable runs a real subprocess
(tests/conftest.py: run_entry with env=...).
"""
import atexit
import io
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import threading

# What the entry points import before they look at their arguments (the server imports each
# once; torch._dynamo is what torch.optim imports on a first optimizer).
PRELOAD = ["numpy", "scipy.stats", "torch", "torch._dynamo", "PIL.Image", "yaml",
           "torch.utils.tensorboard", "siqa.training.launch", "siqa.training.run",
           "siqa.evaluation.evaluate", "siqa.evaluation.comparison", "siqa.inference.api",
           "siqa.inference.export", "siqa.nss.cache"]

_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _exit_code(stop: SystemExit) -> int:
    """The interpreter's exit status for SystemExit(code)."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def _child(script, args, cwd, env, out_path, err_path):
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    # the streams of a non-interactive `python script.py`: stdout block-buffered, stderr
    # line-buffered with backslashreplace
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    code = 0
    try:
        if script.startswith("-m "):
            sys.argv = [script, *args]
            runpy.run_module(script[3:], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [script, *args]
            sys.path.insert(0, os.path.dirname(script))
            runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = _exit_code(stop)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


def stop():
    """Stop this process's server and wait for it, so that the CPU time of every child it
    forked is counted in this process's (`/usr/bin/time` of the suite sees it)."""
    if _context is not None:
        from multiprocessing import forkserver

        forkserver._forkserver._stop()  # what CPython's own tests call; 3.8 to 3.13


# multiprocessing's bookkeeping of children is not thread-safe (starting a process polls the
# others, and two threads reading one exit status leave one of them 255): one run at a time
_one_at_a_time = threading.Lock()


def run(script, args, cwd=None, timeout=600):
    """`python script *args` (or `-m module` for script "-m module"), as a CompletedProcess
    with text stdout and stderr; subprocess.TimeoutExpired after `timeout` seconds."""
    with _one_at_a_time:
        return _run(script, args, cwd, timeout)


def _run(script, args, cwd, timeout):
    args = [str(a) for a in args]
    cmd = [sys.executable, *script.split(), *args]
    with tempfile.TemporaryDirectory(prefix="entry-") as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        process = _forkserver().Process(
            target=_child, args=(str(script), args, str(cwd or os.getcwd()), dict(os.environ), out, err))
        process.start()
        process.join(timeout)
        timed_out = process.exitcode is None
        if timed_out:
            process.kill()
            process.join()
        with open(out, encoding="utf-8", errors="replace") as f_out, \
                open(err, encoding="utf-8", errors="replace") as f_err:
            stdout, stderr = f_out.read(), f_err.read()
        if timed_out:
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
        return subprocess.CompletedProcess(cmd, process.exitcode, stdout, stderr)
