#!/usr/bin/env bash
# The project's GPU checks, for one call of a lent GPU machine (bare, no network). Installs
# cnas-ir and the wheels the machine lacks, then runs the steps named (default: all), each
# under its own time limit, logged to $OUT/STEP.log:
#   bench_cuda  benchmarks/bench_cuda.py: CUDA equivalence, inference latency, compact training
#               (about 6 min on an H200 with cuDNN heuristics for every new conv shape)
#   demo        the README's demo through the CLI on CUDA (about 2.5 min: digits is launch-bound)
#   bench_gpu   benchmarks/bench_gpu.py: one-shot training throughput, 4 variants (~3 min)
#   pytest      the test suite with CUDA visible, 8 workers (under 1 min)
# A lease is 15 minutes of device time, start included: name two or three steps per session.
# Prepare the wheels first, on a machine with the registries (pydantic is not in the image):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic pydantic_core annotated_types typing_inspection
# and name .whl in the call's carry. onnxruntime-gpu (255 MB) is over the 64 MB a call carries,
# so onnxruntime there is the image's CPU build.
set -u
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site"
$PIP --upgrade .whl/*.whl && $PIP --no-build-isolation . || exit 1
# python3 -P everywhere: the installed cnas_ir (with .passes and .backends), not the source folder
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -P -c "import torch, onnxruntime as o; print('torch', torch.__version__, torch.cuda.is_available(), \
'onnxruntime', o.__version__, o.get_available_providers())"
step() {  # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, report the exit status
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? in $((SECONDS - t0)) s"
}
RUN=/tmp/demo-run
steps=${*:-bench_cuda demo bench_gpu pytest}
for s in $steps; do case $s in
bench_cuda) step bench_cuda 420 python3 -P benchmarks/bench_cuda.py --json "$OUT/bench_cuda.json" ;;
demo) rm -rf $RUN; step demo 200 bash -c "set -e; c='cnas-ir --run-dir $RUN'; \$c build examples/tiny.yaml; \
\$c train --device cuda; \$c prune --device cuda; \$c train --device cuda --amp bf16 --channels-last; \
\$c export --onnx --check; \$c eval --device cuda; \$c stats --markdown" ;;
bench_gpu) step bench_gpu 240 python3 -P benchmarks/bench_gpu.py ;;
# from tests/: the suite's own `python -m cnas_ir` subprocesses must not find the source folder
pytest) step pytest 150 bash -c "cd tests && python3 -P -m pytest -c ../pyproject.toml --rootdir .. -q -n 8 -p no:cacheprovider ." ;;
*) echo "unknown step $s"; exit 2 ;;
esac; done
for s in bench_cuda demo bench_gpu pytest; do [ -f "$OUT/$s.log" ] && { echo "--- $s"; tail -n 40 "$OUT/$s.log"; }; done
