"""The embedded demo database (`demo`), built by siqa/data/demo.py on first use into `root`
(default ``data/demo``, ``data/demo_full`` for demo_size=full) and read through the CSV
loader. Near-duplicate scenes share one content id (siqa.data.demo.CONTENT_GROUPS); each pair
carries its two views' own labels as per-view scores.
"""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

from siqa.data.databases.csv_manifest import load_csv
from siqa.data.demo import content_group, default_root, ensure_demo
from siqa.data.records import StereoPair


def view_scores(folder) -> dict:
    """name -> (left, right) per-view scores of the demo, 100 * (1 - SSIM of the view), the
    per-view halves of its full-reference label (siqa/data/demo.py; labels.csv)."""
    path = Path(folder) / "labels.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["name"]: (100 * (1 - float(row["q_l"])), 100 * (1 - float(row["q_r"])))
                for row in csv.DictReader(f)}


def load(root=None, demo_size="small", progress=True) -> list[StereoPair]:
    """dataset.name=demo: the pairs of the demo of `demo_size`, built first where `root`
    (default: its size's folder) holds no current build; `progress`: a bar while it builds."""
    folder = ensure_demo(root if root is not None else default_root(demo_size), progress=progress,
                         size=demo_size)
    views = view_scores(folder)
    return [replace(p, content=content_group(p.content), view_scores=views.get(p.name))
            for p in load_csv(folder / "manifest.csv")]
