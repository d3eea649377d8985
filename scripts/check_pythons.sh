#!/usr/bin/env bash
# For each CPython 3.10-3.13 found on this machine: a fresh clone of HEAD, the README's
# setup (`PYTHON=... bash setup.sh`), then the tests (`.venv/bin/python -m pytest -q`), and
# a Markdown table of the results. Not part of CI: each Python downloads and installs its
# own torch, and runs the whole suite.
#
#   bash scripts/check_pythons.sh                      # every Python found, the whole suite
#   bash scripts/check_pythons.sh --pythons "3.12 3.13" --tests "tests/test_bourbia2021.py"
#   bash scripts/check_pythons.sh --keep               # keep the clones (and their .venv)
#
# Interpreters are looked up as python3.X on PATH, then ~/.pyenv/versions/3.X.*/bin/python.
# Only committed work is checked (the clone is of HEAD). Logs stay in the printed folder.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
pythons="3.10 3.11 3.12 3.13"
tests=""
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --pythons) pythons="$2"; shift 2 ;;
        --tests) tests="$2"; shift 2 ;;
        --keep) keep=yes; shift ;;
        *) echo "check_pythons.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
    esac
done

find_python() {  # the newest interpreter of minor version $1, or nothing
    # (a pyenv shim is on PATH for every installed version but runs only the selected ones)
    if "python$1" -c '' >/dev/null 2>&1; then command -v "python$1"; return; fi
    local found
    found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$1".*/bin/python 2>/dev/null | sort -V | tail -1)
    [ -n "$found" ] && echo "$found"
    return 0
}

work=$(mktemp -d "${TMPDIR:-/tmp}/check_pythons.XXXXXX")
# the real metadata files sit in shared/ beside the checkout; beside the clones too, so that
# their tests run instead of skipping
if [ -d "$repo/../shared" ]; then ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"; fi
commit=$(git -C "$repo" rev-parse --short HEAD)
rows=()
for minor in $pythons; do
    py=$(find_python "$minor")
    if [ -z "$py" ]; then
        rows+=("| $minor | not found | - | - |")
        continue
    fi
    version=$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
    clone="$work/py$minor"
    git clone -q "$repo" "$clone" && git -C "$clone" checkout -q "$commit"  # the same commit for all
    echo "== Python $version ($py): setup, log in $work/setup-$minor.log"
    start=$(date +%s)
    if (cd "$clone" && PYTHON="$py" bash setup.sh) >"$work/setup-$minor.log" 2>&1; then
        setup=ok
        echo "== Python $version: tests, log in $work/tests-$minor.log"
        # shellcheck disable=SC2086  # $tests is a list of pytest arguments
        (cd "$clone" && .venv/bin/python -m pytest -q -p no:cacheprovider $tests) \
            >"$work/tests-$minor.log" 2>&1 || true
        # pytest's last line, e.g. "= 3 failed, 198 passed, 2 skipped in 301.2s ="
        result=$(tail -1 "$work/tests-$minor.log" | sed -E 's/^=+ //; s/ in [0-9.]+s.*$//; s/ =+$//')
    else
        setup="FAILED: $(grep -m1 -E 'ERROR|Error|error' "$work/setup-$minor.log" | cut -c1-80)"
        result="-"
    fi
    minutes=$(awk -v s="$(( $(date +%s) - start ))" 'BEGIN { printf "%.1f", s / 60 }')
    rows+=("| $version | $setup | $result | $minutes |")
    [ -n "$keep" ] || rm -rf "$clone"
done

echo
echo "Checked $(date +%Y-%m-%d) at commit $commit on $(uname -sm), $(nproc) CPU cores;"
echo "tests: pytest -q ${tests:-(the whole suite)}; minutes = setup + tests, fresh clone and .venv."
echo
echo "| Python | setup.sh | tests | minutes |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "logs: $work"
