#!/usr/bin/env bash
# The packages the GPU box lacks, as wheels in wheels/ (git-ignored), to be carried there with
# the repository: the box has no network. About 4.3 MB in all, far under the 64 MiB of ignored
# paths that the device tool carries. See benchmarks/gpu_check.py for the box's side.
#   stereodemo  the 12 stereo pairs of the demo database (it declares Requires-Python !=3.12
#               although only its image files are read: hence --ignore-requires-python)
#   dtcwt       the independent DT-CWT the NSS tests compare against (no wheel on PyPI: built
#               here from its sdist with `pip wheel`)
#   openpyxl, et-xmlfile  Waterloo's MOS.xlsx (the tests of that layout)
#   six         dtcwt imports it
# The versions are those of requirements.txt / requirements-nodeps.txt (et-xmlfile: the one
# openpyxl pulls into setup.sh's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
rm -rf wheels
# `pip wheel` (pip 23.2) ignores --ignore-requires-python when it looks stereodemo up under
# Python 3.12, `pip download` does not: the wheels that exist are downloaded, dtcwt built
"$PYTHON" -m pip download -q --no-deps --ignore-requires-python -d wheels \
    stereodemo==0.7 openpyxl==3.1.5 et-xmlfile==2.0.0 six==1.17.0
"$PYTHON" -m pip wheel -q --no-deps -w wheels dtcwt==0.14.0
ls wheels
echo "gpu_box_wheels: $(ls wheels | wc -l) wheels, $(du -sb wheels | cut -f1) bytes in wheels/"
