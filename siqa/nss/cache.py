"""Offline computation of the NSS targets of many stereo pairs, with an on-disk cache.

One entry per pair under `<cache_dir>/nss/`, named by a key: the SHA-256 of the image
files' contents (left and right, or the side-by-side file) together with the NSS settings
(marginal, preprocess) and NSS_VERSION. A changed image or setting therefore gives a new key
and is recomputed; nothing else is. Bump NSS_VERSION whenever the computed numbers change.

Entry format (written atomically with `siqa.files.atomic_write`): a first line
`SIQA-NSS <version>`, a second line of JSON (key, settings, file hashes, the SHA-256 of the
payload), then the payload: 108 little-endian float64. An entry whose header, key, length or
checksum does not verify is reported with a warning and recomputed.

Several jobs on one cache (three trainings started together, torchrun on several nodes)
compute each entry once: a job claims a missing entry with an exclusive flock of
`<entry>.lock` (siqa.files.try_lock) and computes only what it claimed; the entries other
jobs hold it reads once they are written, waiting for them when it has nothing else left.
A job that dies releases its claims (the kernel drops its locks), so its entries are taken
by the next job that needs them. A job claims each entry when its computation reaches it
rather than all at once, so that jobs started together share the work.
"""
import json
import os
import warnings
from pathlib import Path

import numpy as np

from siqa.errors import UserError
from siqa.files import WriteFailed, atomic_write, remove_dead_temporaries, sha256_bytes, sha256_file, try_lock, unlock
from siqa.imageio import grey_cv2, read_views
from siqa.nss.features import MARGINALS, N_FEATURES, PREPROCESS, nss_features, nss_features_batch
from siqa.progress import bar as progress_bar

NSS_VERSION = 2  # 2: left-censored mle0 marginals (siqa.nss.features); every cached target is recomputed
MAGIC = b"SIQA-NSS"
GPU_BATCH = 16


def _settings(marginal, preprocess):
    if marginal not in MARGINALS:
        raise UserError(f"unknown NSS marginal {marginal!r}: use one of {', '.join(MARGINALS)}")
    if preprocess not in PREPROCESS:
        raise UserError(f"unknown NSS preprocess {preprocess!r}: use one of {', '.join(PREPROCESS)}")
    return {"marginal": marginal, "preprocess": preprocess, "version": NSS_VERSION}


def _file_hash(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    return sha256_file(path)


def entry_key(left, right, settings):
    """(key, description) of one pair: hashes of the files' contents + the settings."""
    desc = {"left": _file_hash(left), "right": None if right is None else _file_hash(right),
            "sbs": right is None, **settings}
    return sha256_bytes(json.dumps(desc, sort_keys=True).encode()), desc


def entry_path(cache_dir, key):
    return Path(cache_dir) / "nss" / key[:2] / f"{key}.nss"


def encode_entry(key, desc, values):
    payload = np.asarray(values, dtype="<f8").tobytes()
    header = dict(desc, key=key, n=N_FEATURES, payload_sha256=sha256_bytes(payload))
    return MAGIC + b" %d\n" % NSS_VERSION + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def decode_entry(data: bytes, key):
    """The 108 values of an entry, or raise ValueError saying what does not verify."""
    first, sep, rest = data.partition(b"\n")
    if not sep or first != MAGIC + b" %d" % NSS_VERSION:
        raise ValueError("bad header line")
    head, sep, payload = rest.partition(b"\n")
    if not sep:
        raise ValueError("truncated header")
    try:
        header = json.loads(head)
    except ValueError:
        raise ValueError("unreadable header") from None
    if header.get("key") != key:
        raise ValueError("key does not match")
    if len(payload) != 8 * N_FEATURES:
        raise ValueError(f"payload is {len(payload)} bytes, expected {8 * N_FEATURES}")
    if sha256_bytes(payload) != header.get("payload_sha256"):
        raise ValueError("checksum mismatch")
    values = np.frombuffer(payload, dtype="<f8").astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("non-finite values")
    return values


def load_entry(path, key):
    """(values or None, problem or None): None, None when absent."""
    path = Path(path)
    if not path.is_file():
        return None, None
    try:
        return decode_entry(path.read_bytes(), key), None
    except (ValueError, OSError) as err:
        return None, str(err)


def read_pair(left, right):
    return read_views(left, right, grey=grey_cv2)


def compute_pair(left, right, marginal="mle0", preprocess="reference", device="cpu"):
    """Targets of one pair of files (a UserError naming the file if they cannot be used)."""
    lv, rv = read_pair(left, right)
    try:
        return nss_features(lv, rv, marginal=marginal, preprocess=preprocess, device=device)
    except ValueError as err:
        raise UserError(f"cannot compute NSS targets of {left}"
                        f"{'' if right is None else ' / ' + str(right)}: {err}") from None


def torch_device_type(device) -> str:
    """'cuda' for 'cuda', 'cuda:1' or a torch.device of a GPU; the device is passed on whole,
    so that cuda:1 computes on cuda:1."""
    return str(device).split(":")[0]


def _worker_init():
    import torch

    torch.set_num_threads(1)


def _worker(job):
    left, right, marginal, preprocess = job
    return compute_pair(left, right, marginal, preprocess, "cpu")


def _compute_missing(jobs, marginal, preprocess, workers, device, bar, count):
    """Yield (index, values) for jobs (index, left, right) as they finish. `jobs` is an
    iterator of at most `count` jobs, read as the work goes (each job is claimed when it is
    read, see nss_targets)."""
    if not count:
        return
    # scipy_free_loc fits on the CPU whatever the device (scipy, ~9 s a pair): the CPU pool
    # runs `workers` pairs at once, where the GPU path would fit one pair after another
    if torch_device_type(device) == "cuda" and marginal != "scipy_free_loc":
        by_size = {}
        for index, left, right in jobs:
            lv, rv = read_pair(left, right)
            by_size.setdefault(lv.shape, []).append((index, left, right, lv, rv))
        for group in by_size.values():
            for start in range(0, len(group), GPU_BATCH):
                chunk = group[start:start + GPU_BATCH]
                try:
                    values = nss_features_batch([c[3] for c in chunk], [c[4] for c in chunk],
                                                marginal, preprocess, device)
                except ValueError as err:
                    raise UserError(f"cannot compute NSS targets of {chunk[0][1]}: {err}") from None
                for c, v in zip(chunk, values):
                    yield c[0], v
                    bar.update(1)
        return
    workers = os.cpu_count() if workers is None else int(workers)
    workers = max(1, min(workers, count))
    if workers == 1:
        for index, left, right in jobs:
            yield index, compute_pair(left, right, marginal, preprocess, "cpu")
            bar.update(1)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    jobs = iter(jobs)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        futures = {}

        def submit_next():  # two jobs a worker in flight: claimed only when about to run
            job = next(jobs, None)
            if job is not None:
                futures[pool.submit(_worker, (job[1], job[2], marginal, preprocess))] = job[0]

        for _ in range(2 * workers):
            submit_next()
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for fut in done:
                yield futures.pop(fut), fut.result()
                bar.update(1)
                submit_next()


def nss_targets(pairs, marginal="mle0", preprocess="reference", cache_dir="data/cache",
                workers=None, device="cpu", progress=True) -> np.ndarray:
    """(N, 108) float64 targets of `pairs` [(left_path, right_path or None)], cached.

    right None: `left` is a side-by-side file (left half = left view). Entries are reused
    when valid; missing or corrupt ones are computed (in parallel over `workers` processes,
    None: os.cpu_count(), 0 or 1: in this process; or batched on the GPU for device="cuda" or
    "cuda:N", except marginal="scipy_free_loc", whose scipy fits always go to the CPU workers)
    and written atomically.
    """
    settings = _settings(marginal, preprocess)
    pairs = [(str(p[0]), None if p[1] is None else str(p[1])) for p in pairs]
    remove_dead_temporaries(Path(cache_dir) / "nss", recursive=True)  # of killed writers
    out = np.zeros((len(pairs), N_FEATURES), dtype=np.float64)
    keys, jobs = [], []
    for index, (left, right) in enumerate(pairs):
        key, desc = entry_key(left, right, settings)
        keys.append((key, desc))
        values, problem = load_entry(entry_path(cache_dir, key), key)
        if problem is not None:
            warnings.warn(f"NSS cache entry {entry_path(cache_dir, key)} for {left} is corrupt "
                          f"({problem}); recomputing", RuntimeWarning, stacklevel=2)
        if values is None:
            jobs.append((index, left, right))
        else:
            out[index] = values
    with progress_bar(total=len(jobs), desc="NSS targets", unit="pair",
                      progress=progress if jobs else False) as bar:
        pending = jobs
        while pending:  # in rounds: claim what no other job computes, compute it, then wait
            held, others = {}, []

            def claims(todo):  # each job claimed as the computation reaches it
                for job in todo:
                    path = entry_path(cache_dir, keys[job[0]][0])
                    _mkdir(path.parent)
                    fd = try_lock(_lock_of(path)) if len(held) < CLAIM_BATCH else None
                    if fd is None:
                        others.append(job)
                    elif _take(out, job[0], path, keys, bar):  # written by another job meanwhile
                        unlock(_lock_of(path), fd)
                    else:
                        held[job[0]] = fd
                        yield job

            claimed = 0
            try:
                for index, values in _compute_missing(claims(pending), marginal, preprocess,
                                                      workers, device, bar, len(pending)):
                    claimed += 1
                    key, desc = keys[index]
                    path = entry_path(cache_dir, key)
                    atomic_write(path, encode_entry(key, desc, values))
                    out[index] = values
                    unlock(_lock_of(path), held.pop(index))
            finally:
                for index, fd in held.items():
                    unlock(_lock_of(entry_path(cache_dir, keys[index][0])), fd)
            if others and not claimed:  # all are being computed elsewhere: wait for one
                lock = _lock_of(entry_path(cache_dir, keys[others[0][0]][0]))
                unlock(lock, try_lock(lock, wait=True))
            pending = [job for job in others
                       if not _take(out, job[0], entry_path(cache_dir, keys[job[0]][0]), keys, bar)]
    return out


CLAIM_BATCH = 256  # entries claimed (lock files held open) at once


def _lock_of(path):
    return path.with_name(path.name + ".lock")


def _mkdir(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteFailed(err.errno, f"cannot write the NSS cache {folder}: {err.strerror}") from err


def _take(out, index, path, keys, bar):
    """Fill out[index] from a valid entry at `path`, if there is one now."""
    values, _ = load_entry(path, keys[index][0])
    if values is None:
        return False
    out[index] = values
    bar.update(1)
    return True


def check_targets(pairs, marginal="mle0", preprocess="reference", cache_dir="data/cache"):
    """Count the pairs whose entry is valid / missing / corrupt, without computing anything.
    Returns a dict with those three counts and the list of (pair, problem) not valid."""
    settings = _settings(marginal, preprocess)
    summary = {"valid": 0, "missing": 0, "corrupt": 0, "problems": []}
    for left, right in pairs:
        key, _ = entry_key(left, right, settings)
        values, problem = load_entry(entry_path(cache_dir, key), key)
        if values is not None:
            summary["valid"] += 1
        elif problem is None:
            summary["missing"] += 1
            summary["problems"].append(((left, right), "missing"))
        else:
            summary["corrupt"] += 1
            summary["problems"].append(((left, right), problem))
    return summary
