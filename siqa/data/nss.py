"""The NSS (naturalness) regression targets of every pair, through the shared cache."""
from __future__ import annotations

import numpy as np

from siqa.data.databases.live3d import LIVE1_FOLDERS
from siqa.errors import UserError, counted

N_TARGETS = 108


def nss_for_pairs(
    pairs,
    marginal="mle0",
    preprocess="reference",
    cache_dir="data/cache",
    workers=None,
    device="cpu",
    progress=True,
) -> np.ndarray:
    """(N, 108) float64 targets, row i for pairs[i] (siqa.nss.cache.nss_targets)."""
    from siqa.nss.cache import nss_targets

    pairs = list(pairs)
    targets = nss_targets(
        [(p.left, p.right) for p in pairs],
        marginal=marginal,
        preprocess=preprocess,
        cache_dir=cache_dir,
        workers=workers,
        device=device,
        progress=progress,
    )
    targets = np.asarray(targets, dtype=np.float64)
    if targets.shape != (len(pairs), N_TARGETS):
        raise UserError(
            f"NSS cache returned shape {targets.shape}, expected ({len(pairs)}, {N_TARGETS})"
        )
    return targets


def nss_from_config(pairs, settings, progress=True, device="cpu") -> np.ndarray:
    """The targets a run's `nss` settings (a siqa.settings.Settings view) ask for: computed
    through the cache, or the authors' published values when `nss.published` names their
    folder (LIVE Phase I only). `nss.workers: 0` means one process per core."""
    nss = settings.nss
    if nss.published:
        return published_targets(pairs, nss.published)
    return nss_for_pairs(pairs, marginal=nss.marginal, preprocess=nss.preprocess, cache_dir=nss.cache_dir,
                         workers=nss.workers or None, device=device, progress=progress)


def _live1_key(name: str) -> str:
    """`gblur/im2_1.bmp` and `blur/im2_1.bmp` name the same LIVE Phase I pair."""
    folder, _, file = name.replace("\\", "/").partition("/")
    return f"{LIVE1_FOLDERS.get(folder.lower(), folder.lower())}/{file.lower()}"


def published_targets(pairs, folder) -> np.ndarray:
    """The 108 targets the authors published for LIVE 3D Phase I (computed with the original
    free-loc fit): `copula_parametre.txt` (108 lines per entry, in the order of
    `im_names.txt`), matched to the pairs by name."""
    from pathlib import Path

    folder = Path(folder)
    names_file, values_file = folder / "im_names.txt", folder / "copula_parametre.txt"
    for f in (names_file, values_file):
        if not f.is_file():
            raise UserError(f"nss.published: {f} not found (the folder must hold im_names.txt "
                            "and copula_parametre.txt)")
    names = names_file.read_text().split()
    try:
        values = np.loadtxt(values_file, dtype=np.float64).reshape(len(names), N_TARGETS)
    except ValueError:
        raise UserError(f"{values_file}: expected {len(names)} x {N_TARGETS} numbers, one per line "
                        f"({counted(len(names), 'entry', 'entries')} in {names_file.name})") from None
    table = {_live1_key(n): row for n, row in zip(names, values)}
    missing = [p.name for p in pairs if _live1_key(p.name) not in table]
    if missing:
        raise UserError(f"nss.published: {counted(len(missing), 'pair')} without published targets "
                        f"(first: {missing[0]}); they exist for LIVE 3D Phase I only")
    return np.stack([table[_live1_key(p.name)] for p in pairs])
