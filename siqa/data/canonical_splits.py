"""The canonical split files shipped in `splits/`: 10 seeded 60/20/20 content-disjoint
splits of each real database, built from the real scene lists (score files, no images).

    python -m siqa.data.canonical_splits [--metadata DIR] [--out splits] [--check]

DIR holds the official score files (default: the first `shared/reference/database_metadata`
found beside or above the repository): `live3d_phase1_data.mat` (LIVE 3D Phase I
`data.mat`), `3DDmosRelease.mat` (LIVE 3D Phase II), `WIVC_I_mos.csv` and `WIVC_II_mos.csv`
(Waterloo-IVC 3D Phase I / II, the header-less export of `MOS.xlsx`: name, reference,
3D MOS, left MOS, right MOS).

Scene ids and pair names are those of `StereoPair` as the loaders produce them. LIVE I and
II are read with the project's own loaders (the .mat file copied into a temporary root).
Waterloo: the loader of this version needs a header row, so column 1 (image name, `.png`
added when it has no extension, as the loader names a pair) and the stem of column 2
(reference, as the loader's scene id) are read directly. The splits are
`content_splits(pairs, (0.6, 0.2, 0.2), seed=0, repeats=10)` (design "balanced-test/2":
no duplicate split, remainder scenes to test before validation, every scene tested at least
once in the 10 splits): a run with `dataset.split_seed=0` (the default) and
`train.repeats=10` on the real database makes the same splits. The files shipped before
this design (commit 8343d43 and earlier) are in the git history; runs made on them can be
repeated with `dataset.split_file` pointing to that version of the file.
"""
import argparse
import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath

from siqa.data.databases import load_database
from siqa.data.records import StereoPair
from siqa.data.splits import content_splits, split_document, write_split_file
from siqa.errors import UserError, counted, run_cli

SEED, RATIOS, REPEATS = 0, (0.6, 0.2, 0.2), 10
ROOT = Path(__file__).resolve().parents[2]
LIVE_FILES = {"live3d_phase1": ("live3d_phase1_data.mat", "data.mat"),
              "live3d_phase2": ("3DDmosRelease.mat", "3DDmosRelease.mat")}
WATERLOO_FILES = {"waterloo3d_phase1": "WIVC_I_mos.csv", "waterloo3d_phase2": "WIVC_II_mos.csv"}
DATABASES = (*LIVE_FILES, *WATERLOO_FILES)


def find_metadata():
    """The real metadata folder beside or above the checkout, or None."""
    for base in (ROOT, *ROOT.parents):
        candidate = base / "shared" / "reference" / "database_metadata"
        if candidate.is_dir():
            return candidate
    return None


def _live_pairs(name, metadata):
    source, official = LIVE_FILES[name]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(metadata / source, Path(tmp) / official)
        return load_database(name, root=tmp, validate=False)


def _waterloo_pairs(name, metadata):
    pairs = []
    with open(metadata / WATERLOO_FILES[name], newline="", encoding="utf-8-sig") as f:
        for row in csv.reader(f):
            if not row or not row[0].strip():
                continue
            image = PurePosixPath(row[0].strip())
            image = image if image.suffix else image.with_suffix(".png")
            pairs.append(StereoPair(str(image), Path(image), None, float(row[2]), True,
                                    PurePosixPath(row[1].strip()).stem, "unknown"))
    return pairs


def database_pairs(name, metadata):
    """The pairs (names and scenes) of database `name` from its real score file."""
    metadata = Path(metadata)
    return (_live_pairs if name in LIVE_FILES else _waterloo_pairs)(name, metadata)


def canonical_document(name, metadata):
    pairs = database_pairs(name, metadata)
    splits = content_splits(pairs, ratios=RATIOS, seed=SEED, repeats=REPEATS)
    return split_document(pairs, splits, name, SEED, RATIOS)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--metadata", help="folder of the real score files")
    parser.add_argument("--out", default=str(ROOT / "splits"))
    parser.add_argument("--check", action="store_true",
                        help="compare with the files in --out instead of writing them")
    args = parser.parse_args(argv)
    metadata = Path(args.metadata) if args.metadata else find_metadata()
    if metadata is None or not metadata.is_dir():
        raise UserError("metadata folder not found: give --metadata DIR (the folder with "
                        "live3d_phase1_data.mat, 3DDmosRelease.mat, WIVC_I_mos.csv, WIVC_II_mos.csv)")
    for name in DATABASES:
        doc = canonical_document(name, metadata)
        path = Path(args.out) / f"{name}.json"
        if args.check:
            if not path.is_file() or json.loads(path.read_text()) != doc:
                raise UserError(f"{path} differs from the split file built from {metadata}")
            print(f"{path}: identical")
        else:
            write_split_file(path, doc)
            print(f"{path}: {counted(doc['pairs'], 'pair')}, {counted(len(doc['scenes']), 'scene')}, "
                  f"{counted(len(doc['splits']), 'split')}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
