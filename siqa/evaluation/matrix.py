"""Cross-database matrix: checkpoints trained on several databases x test databases.

                     test: live3d_phase1   live3d_phase2   waterloo3d_phase1 ...
    train: live1 (DMOS)    0.93*            0.81            0.74
    train: ivc1  (MOS)     0.70             0.66            0.95*

A cell is the SROCC (and PLCC) of the checkpoint's predictions against the test
database's scores. Direction: a checkpoint predicts on the scale of its training database,
DMOS (higher = worse: LIVE, demo) or MOS (higher = better: Waterloo). Where the two
directions differ, the correlations are negated, so that 1 always means agreement and -1
disagreement; the raw values are kept in the JSON beside the oriented ones. RMSE is not
reported: the scales differ. Which pairs the checkpoint has seen is decided from the pairs
themselves (siqa.data.overlap: content hashes, never paths): a test database that holds the
checkpoint's test split is its own and is scored on that split only (marked *); one that
shares some training or validation pairs is scored without them (marked +, the number
dropped in the JSON); any other database on all its pairs.
"""
from pathlib import Path

import numpy as np

from siqa import config as config_mod
from siqa.build import load_model, read_checkpoint
from siqa.data import load_database_from_config
from siqa.data.databases import takes
from siqa.data.overlap import evaluation_pairs
from siqa.device import select_device, use_run_threads
from siqa.errors import UserError, counted
from siqa.evaluation.metrics import krocc, plcc, srocc
from siqa.evaluation.reports import fmt_metric, write_json
from siqa.files import atomic_write_text
from siqa.scoring import predict_database
from siqa.settings import Settings

SPLIT_LABELS = {"test": "checkpoint test split", "all": "all",
                "all less seen": "all less the checkpoint's training/validation pairs"}
MARKS = ("* = the checkpoint's own test split; + = without the checkpoint's training and "
         "validation pairs, which this database shares")


def parse_test(spec):
    """'NAME=PATH' -> (label, dataset overrides): PATH is the root, or the manifest file of a
    database whose loader reads only a manifest (csv)."""
    if "=" not in spec:
        raise UserError(f"--test {spec!r}: expected NAME=PATH, e.g. live3d_phase2=/data/LIVE3D-II")
    name, path = (s.strip() for s in spec.split("=", 1))
    manifest_only = takes(name, "manifest") and not takes(name, "root")
    key = "manifest" if manifest_only and path.lower().endswith(".csv") else "root"
    return name, {"name": name, "root": None, "manifest": None, key: path}


def oriented(pred, pairs, trained_higher_is_better) -> dict:
    """Correlations of `pred` with the pairs' scores, sign-corrected for the direction."""
    score = np.array([p.score for p in pairs], dtype=np.float64)
    tested_hib = {bool(p.higher_is_better) for p in pairs}
    if len(tested_hib) != 1:
        raise UserError("the test database mixes MOS and DMOS pairs")
    flip = tested_hib.pop() != bool(trained_higher_is_better)
    raw = {"srocc": srocc(pred, score), "plcc": plcc(pred, score), "krocc": krocc(pred, score)}
    cell = {k: (None if v is None else (-v if flip else v)) for k, v in raw.items()}
    cell.update({f"raw_{k}": v for k, v in raw.items()})
    cell.update(n=len(pairs), flipped=flip)
    return cell


def _checkpoint_label(path, state, used):
    label = f"{state['database']['name']} ({Path(path).parent.name})"
    while label in used:
        label += "'"
    used.add(label)
    return label


def cross_database_matrix(checkpoints, tests, out, overrides=(), progress=False, log=print):
    """Score every checkpoint on every test database; write matrix.json and matrix.md.
    `overrides` (key.sub=value) apply to every evaluation (e.g. device=cpu)."""
    if not checkpoints or not tests:
        raise UserError("--matrix needs at least one --checkpoint and one --test NAME=PATH")
    specs = [parse_test(t) for t in tests]
    labels = []
    for name, _ in specs:
        label = name
        while label in labels:
            label += "'"
        labels.append(label)
    rows, cells, used = [], [], set()
    for path in checkpoints:
        state = read_checkpoint(path, required=("model", "config", "split", "database"))
        row = _checkpoint_label(path, state, used)
        rows.append(row)
        own = config_mod.load_config(overrides=overrides, base=state["config"])
        device = select_device(Settings(own).device)
        with use_run_threads(own):  # the run's arithmetic on the CPU (siqa.device)
            model = load_model(state, device, source=path)  # once per checkpoint
            for label, (_, dataset) in zip(labels, specs):
                cfg = config_mod.load_config(overrides=overrides, base=state["config"])
                cfg["dataset"].update(dataset)
                cfg["patches"] = state["config"]["patches"]
                pairs = load_database_from_config(Settings(cfg), progress)
                chosen = evaluation_pairs(pairs, state, "test")  # by content
                if not chosen.pairs:
                    raise UserError(f"--test {label}: every pair is a training or validation pair "
                                    f"of {path}: nothing to score")
                pred = predict_database(model, chosen.pairs, cfg, device, progress=progress)
                cell = oriented(pred, chosen.pairs, state["database"]["higher_is_better"])
                cell.update(train=row, test=label, checkpoint=str(path), mark=chosen.mark,
                            split=SPLIT_LABELS[chosen.split], dropped_seen_pairs=chosen.dropped)
                cells.append(cell)
                log(f"{row} -> {label}: SROCC {fmt_metric(cell['srocc'])} PLCC {fmt_metric(cell['plcc'])} "
                    f"({counted(cell['n'], 'pair')}, {chosen.describe()}"
                    f"{', direction flipped' if cell['flipped'] else ''})")
    result = {"rows": rows, "columns": labels, "cells": cells,
              "note": "correlations oriented so that 1 means agreement (MOS vs DMOS handled); "
                      "raw_* are before orientation; " + MARKS}
    out = Path(out)
    write_json(out / "matrix.json", result)
    atomic_write_text(out / "matrix.md", markdown(result))
    return result, out


def markdown(result) -> str:
    by = {(c["train"], c["test"]): c for c in result["cells"]}
    parts = []
    for key, title in (("srocc", "SROCC"), ("plcc", "PLCC")):
        lines = [f"{title}, train (rows) x test (columns); 1 = agreement whatever the score "
                 "direction; " + MARKS, "",
                 "| train \\ test | " + " | ".join(result["columns"]) + " |",
                 "|---|" + "---|" * len(result["columns"])]
        for row in result["rows"]:
            values = []
            for col in result["columns"]:
                c = by[(row, col)]
                values.append(f"{fmt_metric(c[key])}{c.get('mark', '')}")
            lines.append(f"| {row} | " + " | ".join(values) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
