"""The databases: one file per family, a plain dict from `dataset.name` to its loader.

    demo               the embedded demo (demo.py): real stereo pairs, LIVE-style distortions
    live3d_phase1      LIVE 3D IQA Phase I (live3d.py): data.mat, separate views, DMOS
    live3d_phase2      LIVE 3D IQA Phase II (live3d.py): 3DDmosRelease.mat, side-by-side, DMOS
    waterloo3d_phase1  Waterloo-IVC 3D Phase I (waterloo3d.py): MOS table, side-by-side, MOS
    waterloo3d_phase2  Waterloo-IVC 3D Phase II (waterloo3d.py)
    csv                any database described by a CSV manifest (csv_manifest.py)

Each family's file describes its layout as distributed. A loader takes, as keyword
arguments, the dataset keys it reads (`root`, `manifest`, `demo_size`) and `progress`, and
returns a list of `StereoPair` records (siqa/data/records.py): its parameters are what it
reads, so the settings (which databases use dataset.root, .manifest and .demo_size) and
`load_database` ask the loader, not a list of names. A loader that takes a manifest but no
folder, given only `root`, reads `root`/manifest.csv where that file exists.
Adding a database layout is its file and one line in DATABASES; docs/databases.md says what
each one expects.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from siqa.data.databases import csv_manifest, demo, live3d, waterloo3d
from siqa.data.records import StereoPair
from siqa.data.validate import validate_pairs
from siqa.errors import UserError

__all__ = ["DATABASES", "load_database", "load_database_from_config", "takes"]

# name -> loader (DATABASES[name](root=..., ...) is the database's list of StereoPair records)
DATABASES = {
    "demo": demo.load,
    "live3d_phase1": live3d.load_phase1,
    "live3d_phase2": live3d.load_phase2,
    "waterloo3d_phase1": waterloo3d.load_phase1,
    "waterloo3d_phase2": waterloo3d.load_phase2,
    "csv": csv_manifest.load_csv,
}


def takes(name, key) -> bool:
    """Whether database `name`'s loader takes `key` (root, manifest, demo_size, progress);
    False for a name that is not a database."""
    known = isinstance(name, str) and name in DATABASES
    return known and key in inspect.signature(DATABASES[name]).parameters


def load_database(name, root=None, manifest=None, validate=True, demo_size="small",
                  progress=True) -> list[StereoPair]:
    """The records of database `name` (see the module docstring), checked by
    `siqa.data.validate.validate_pairs` unless `validate=False`. `progress`: a bar while the
    demo database is built."""
    if not isinstance(name, str) or name not in DATABASES:
        raise UserError(f"unknown dataset.name '{name}' (valid: {', '.join(DATABASES)})")
    if (manifest is None and root is not None and takes(name, "manifest") and not takes(name, "root")
            and (Path(root) / "manifest.csv").is_file()):
        manifest = Path(root) / "manifest.csv"
    given = {"root": root, "manifest": manifest, "demo_size": demo_size, "progress": progress}
    pairs = DATABASES[name](**{key: value for key, value in given.items() if takes(name, key)})
    if validate:
        where = f"dataset.name={name}"
        if manifest is not None:
            where += f", dataset.manifest={manifest}"
        if root is not None:
            where += f", dataset.root={root}"
        validate_pairs(pairs, source=where)
    return pairs


def load_database_from_config(settings, progress=True) -> list[StereoPair]:
    """`load_database` with a run's `dataset` settings (a siqa.settings.Settings view)."""
    ds = settings.dataset
    return load_database(ds.name, root=ds.root, manifest=ds.manifest, demo_size=ds.demo_size,
                         progress=progress)
