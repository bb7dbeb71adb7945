#!/usr/bin/env bash
# make bench-train, and the worker's tests, on a GPU machine that has Python and PyTorch but
# neither the API's packages nor a package index, in one go.
#
#   bench/gpu_run.sh pack          on a machine with the index, from the project's root after
#                                  `make install`: the wheels the GPU machine's image lacks
#                                  (bench/gpu_wheels.py lists them) into .whl/, and MNIST's
#                                  four files gzipped into .mnist/ (both ignored by git)
#   bench/gpu_run.sh run [ARGS]    on the GPU machine, from the checkout with .whl/ and .mnist/:
#                                  installs the wheels into /tmp/site (unless the packages are
#                                  importable already), unpacks MNIST, runs the worker's unit
#                                  tests and then `python -m bench.$BENCH ARGS` (BENCH:
#                                  train_speed, the default, or quality for bench-quality)
#
# Try it here first: `bench/gpu_run.sh pack && PYTHON=.venv/bin/python bench/gpu_run.sh run
# --device cpu`. The assignment's study on a GPU:
# `TESTS= BENCH=quality bench/gpu_run.sh run --processes 4`. Environment: BENCH
# (train_speed), PYTHON (python3), DATA_DIR (/tmp/tunelab-data), SITE (/tmp/site), TESTS
# (the pytest arguments; empty skips them), WHEELS (.whl), WHEEL_PYTHON (3.12: the GPU
# image's), INSTALL (auto; `always` installs the wheels even where the
# packages are importable, to try the installation with wheels for this Python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-/tmp/tunelab-data}
SITE=${SITE:-/tmp/site}
WHEELS=${WHEELS:-.whl}
INSTALL=${INSTALL:-auto}
TESTS=${TESTS-tests/unit/worker tests/unit/cli/test_gpu_workers.py}
# The wheels' interpreter: the GPU machine's image has Python 3.12.
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}

exclude() {
  grep -qx "/$1/" .git/info/exclude 2>/dev/null || echo "/$1/" >> .git/info/exclude
}

pack() {
  exclude "$WHEELS"
  exclude .mnist
  mkdir -p "$WHEELS" .mnist
  .venv/bin/python -m bench.gpu_wheels > "$WHEELS/wanted.txt"
  echo "wheels for: $(tr '\n' ' ' < "$WHEELS/wanted.txt")"
  .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$WHEELS" -q -r "$WHEELS/wanted.txt"
  .venv/bin/tunelab data prepare
  for file in var/data/MNIST/raw/*-ubyte; do
    gzip -c "$file" > ".mnist/$(basename "$file").gz"
  done
  du -sh "$WHEELS" .mnist
}

run() {
  if [ "$INSTALL" = always ] || ! "$PYTHON" -c "import fastapi, sqlmodel, celery, optuna" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
    # The API reads its version from the installed package's metadata.
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
    mkdir -p "$SITE/tunelab-$version.dist-info"
    printf 'Metadata-Version: 2.1\nName: tunelab\nVersion: %s\n' "$version" \
      > "$SITE/tunelab-$version.dist-info/METADATA"
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONUNBUFFERED=1
  # As `tunelab worker` sets it, so that the deterministic tests may run on CUDA.
  export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
  mkdir -p "$DATA_DIR/MNIST/raw"
  for file in .mnist/*.gz; do
    gunzip -c "$file" > "$DATA_DIR/MNIST/raw/$(basename "$file" .gz)"
  done
  "$PYTHON" -c "import torch; print('PyTorch', torch.__version__, 'CUDA', torch.cuda.is_available())"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
  if [ -n "$TESTS" ]; then
    # shellcheck disable=SC2086 - the test paths are words
    "$PYTHON" -m pytest $TESTS -q -p no:cacheprovider || echo "tests failed (status $?)"
  fi
  "$PYTHON" -m "bench.${BENCH:-train_speed}" --data-dir "$DATA_DIR" "$@"
}

case "${1:-}" in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 pack | run [arguments of bench.\$BENCH, train_speed by default]" >&2; exit 2 ;;
esac
