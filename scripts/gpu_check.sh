#!/usr/bin/env bash
# The GPU checks of issue 8, for a session that has a CUDA machine (an H100 with torch 2.11+cu130,
# no network there, no pykeops).
#
#   scripts/gpu_check.sh wheels   # HERE (with pip access): build/download the pure-Python wheels the
#                                 # GPU image lacks into .whl/ (git-ignored through .git/info/exclude)
#   scripts/gpu_check.sh run      # THERE, in the repository root, with .whl carried along: install
#                                 # the wheels with --no-deps (the machine keeps its own CUDA torch),
#                                 # run the cuda test suite and the benchmarks, results under $OUT
#                                 # (or runs/gpu when OUT is unset)
#
# The GPU image already has torch, lightning, numpy, scipy, h5py, matplotlib, tqdm, pyyaml,
# tensorboard and pytest; it lacks torchsde (+ trampoline), nflows, geomloss and jsonargparse
# (+ docstring-parser, typeshed-client). nflows and geomloss publish no wheels: `pip wheel` builds them.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    python3 -m pip wheel --no-deps -w .whl nflows==0.14 geomloss==0.3.1 trampoline==0.1.2
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      -d .whl torchsde==0.2.6 jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.14.0
    ls -l .whl
    ;;
  run)
    out="${OUT:-runs/gpu}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"
    # 1. the cuda test suite (its pass count goes to docs/benchmarks.md "GPU")
    python3 -m pytest -m cuda -q -rs -p no:cacheprovider 2>&1 | tee "$out/pytest_cuda.txt" || true
    # 2. the scale benchmark: online/multiscale Sinkhorn, grid force 1e8, nudged step 1e8, WSINDy on CUDA
    python3 scripts/bench_scale.py --out "$out" 2>&1 | tee "$out/bench_scale.log" || true
    # 3. the methods' own benchmarks time CUDA where it is present
    python3 scripts/bench_nudging.py --out "$out" 2>&1 | tail -20 || true
    python3 scripts/bench_wsindy.py --out "$out" --threads 1 2>&1 | tail -20 || true
    ;;
  *)
    echo "usage: scripts/gpu_check.sh wheels|run" >&2
    exit 2
    ;;
esac
