#!/usr/bin/env bash
# A rehearsal of the GPU box on this CPU machine, so that its ~15 minutes give figures and not
# a traceback. It builds .venv-gpubox like the box's image (Python 3.12, torch 2.11, the
# packages listed below and nothing else: no stereodemo, dtcwt or openpyxl), then follows the
# preparation that benchmarks/gpu_check.py documents, line for line, with `python` being that
# venv's interpreter, and runs the check to its end on the CPU:
#     bash scripts/rehearse_gpu_box.sh          (from the repository root or anywhere)
# Exits non-zero if a step of the check, or the CUDA-marked tests' collection, fails. The
# venv is reused when it is complete (a second run skips the install). Its own files:
# .venv-gpubox/, wheels/ and data/ (all git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
PY312="${PY312:-/root/.pyenv/versions/3.12.1/bin/python3.12}"
VENV=.venv-gpubox
say() { echo "rehearse_gpu_box: $*"; }
failed=()

# ---- the image: Python 3.12, torch 2.11 (else the pinned one, said below), and these
IMAGE=(numpy scipy pyyaml pillow opencv-python-headless tensorboard matplotlib scikit-image
       tqdm pytest hypothesis six onnx onnxruntime onnxscript)
if [ -f "$VENV/complete" ]; then
    say "reusing $VENV: $(cat "$VENV/complete")"
else
    rm -rf "$VENV"
    "$PY312" -m venv "$VENV"
    vpip() { "$VENV/bin/python" -m pip -q --disable-pip-version-check "$@"; }
    # requirements.txt's versions as constraints (torch aside): the image's own are unknown
    pins="$VENV/constraints.txt"
    grep -vE '^(torch|torchvision)==' requirements.txt > "$pins"
    if vpip install -c "$pins" torch==2.11.0 torchvision==0.26.0 "${IMAGE[@]}"; then
        echo "torch 2.11.0, as on the GPU box" > "$VENV/complete.tmp"
    else
        pinned=$(grep -E '^(torch|torchvision)==' requirements.txt | tr '\n' ' ')
        say "torch 2.11.0 does not install here: the pinned $pinned instead"
        vpip install -c "$pins" $pinned "${IMAGE[@]}"
        echo "$pinned(NOT the box's torch 2.11.0, which did not install here)" > "$VENV/complete.tmp"
    fi
    mv "$VENV/complete.tmp" "$VENV/complete"
    say "built $VENV: $(cat "$VENV/complete")"
fi
"$VENV/bin/python" - <<'PY'
import importlib.util, sys, torch
extra = [m for m in ("stereodemo", "dtcwt", "openpyxl") if importlib.util.find_spec(m)]
if extra:
    sys.exit(f"the venv holds {extra}, which the GPU box lacks: remove .venv-gpubox")
print(f"rehearse_gpu_box: Python {sys.version.split()[0]}, torch {torch.__version__}")
PY

# ---- gpu_check.py's preparation, as its docstring says it (OUT: the folder that comes back)
export PATH="$PWD/$VENV/bin:$PATH"
OUT=data/rehearsal/out
rm -rf data/gpu_deps "$OUT"
bash scripts/gpu_box_wheels.sh
python -m pip install --no-deps --no-index --ignore-requires-python --upgrade --target "$PWD/data/gpu_deps" wheels/*.whl
PYTHONPATH="$PWD/data/gpu_deps" python benchmarks/gpu_check.py "$OUT" --device cpu --quick \
    || failed+=("gpu_check.py (see $OUT/gpu_check.md)")

# ---- the CUDA-marked tests as gpu_check collects them, but without the carried wheels:
# collection must not need dtcwt
python -m pytest -q -p no:cacheprovider -m cuda tests || failed+=("pytest -m cuda tests")
if [ -f tests/test_cuda_host.py ]; then
    python -m pytest -q -p no:cacheprovider tests/test_cuda_host.py || failed+=("tests/test_cuda_host.py")
fi

say "wall time $((SECONDS - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "passed"
