"""Scoring stereo pairs from files with a trained checkpoint (what predict.py runs)."""
import csv
import io
from pathlib import Path

import numpy as np
import torch

from siqa.checkpoint import load_checkpoint
from siqa.data.records import StereoPair
from siqa.engine import predict_pairs, select_device
from siqa.errors import UserError
from siqa.experiment import describe_scale, load_model, split_data
from siqa.files import atomic_write_text

__all__ = ["load", "score_pairs", "read_manifest", "write_predictions", "describe_scale"]


def load(checkpoint, device_name="auto"):
    state = load_checkpoint(checkpoint, required=("model", "database", "config"))
    device = select_device(device_name)
    model = load_model(state, device, source=checkpoint)
    return model, state["database"], state["config"]["patches"]["normalisation"], device


def score_pairs(model, pairs, device, normalisation="reference", chunk=32):
    """One score per (left, right_or_None) pair; pairs are processed `chunk` at a time so that
    a long list of large images never holds all its patches at once."""
    scores = []
    for start in range(0, len(pairs), chunk):
        records = [StereoPair(name=str(left), left=Path(left), right=None if right is None else Path(right),
                              score=float("nan"), higher_is_better=False, content="", distortion="")
                   for left, right in pairs[start : start + chunk]]
        data = split_data(records, np.zeros((len(records), model.nss_dim)), torch.float32, normalisation,
                          progress=False)
        scores.extend(predict_pairs(model, data.to(device)).tolist())
    return scores


def read_manifest(path):
    """Rows of a CSV with `left,right` or `sbs` columns; paths are relative to the CSV."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    fields = list(rows[0].keys()) if rows else []
    if not ({"left", "right"} <= set(fields) or "sbs" in fields):
        raise UserError(f"manifest {path} needs columns left,right or sbs (found: {', '.join(fields) or 'none'})")
    base = path.parent
    pairs = []
    for row in rows:
        if "sbs" in fields and row.get("sbs"):
            pairs.append((base / row["sbs"], None))
        else:
            pairs.append((base / row["left"], base / row["right"]))
    return rows, fields, pairs


def write_predictions(out, rows, fields, scores):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields + ["prediction"], lineterminator="\n")
    writer.writeheader()
    for row, score in zip(rows, scores):
        writer.writerow({**row, "prediction": repr(float(score))})
    atomic_write_text(out, buf.getvalue())
