#!/usr/bin/env bash
# Every GPU check rwedit has, in one run of at most ~8 minutes, on a machine with a CUDA torch and no network.
#
#   benchmarks/gpu_check.sh prepare      # here, with network to the package registry: wheels into .whl/
#   benchmarks/gpu_check.sh run OUT      # there (python3 with CUDA torch, transformers, peft, accelerate):
#                                        # installs the carried wheels and rwedit, then writes every figure to OUT
#
# `run` does, each step logged to OUT/log.txt and timed in OUT/steps.tsv:
#   1. the CUDA-marked tests (statistics, G v, adapters, direct scores on cuda equal the CPU's): OUT/cuda_tests.txt
#   2. the default test suite with CUDA visible (time-boxed): OUT/default_tests.txt
#   3. the organism quickstart on the GPU (--set device=cuda): OUT/quickstart.txt
#   4. the 1.1B pair pass (OUT/pair_pass.json) and RSF grid (OUT/probes.json; 4 layers) benchmarks
# The wheels it needs are the packages rwedit depends on that the GPU image lacks (lm-eval and its needs,
# datasets, trl, pydantic); `prepare` pins them to the versions of this checkout's .venv.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}

NEEDED="lm_eval datasets evaluate dill multiprocess sqlitedict pytablewriter DataProperty mbstrdecoder pathvalidate
tabledata tcolorpy typepy chardet word2number more-itertools jsonlines zstandard rouge_score nltk trl pydantic
pydantic_core annotated-types typing-inspection xxhash"

if [ "$mode" = prepare ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p .whl
  freeze=$(.venv/bin/python -m pip freeze 2>/dev/null)
  for name in $NEEDED; do
    pin=$(printf '%s\n' "$freeze" | grep -i -E "^${name//[-_]/[-_]}==" | head -1)
    [ -n "$pin" ] || { echo "prepare: $name is not installed in .venv; install rwedit there first"; exit 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$pin" 2>/dev/null \
    || python3 -m pip wheel -q --no-deps -w .whl "$pin" \
    || { echo "prepare: no wheel for $pin"; exit 1; }
  done
  du -sh .whl; echo "prepare: carry .whl (and nothing else) in the device run"
  exit 0
fi

if [ "$mode" != run ] || [ -z "${2:-}" ]; then
  echo "usage: $0 prepare | run OUT"; exit 2
fi
OUT=$2; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
step() {  # step NAME SECONDS CMD...: run with a time box, record its wall time and exit code
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s.%N)
  log "step $name (at most ${limit}s): $*"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; local rc=$?
  printf '%s\t%s\t%.1f\n' "$name" "$rc" "$(echo "$(date +%s.%N) - $t0" | bc)" >> "$OUT/steps.tsv"
  tail -3 "$OUT/$name.txt" | tee -a "$OUT/log.txt"
}

printf 'step\trc\twall_s\n' > "$OUT/steps.tsv"
scratch=$(mktemp -d)  # the device machine's scratch: installed wheels and the quickstart's run
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$scratch/site" .whl/*.whl \
  || { log "wheel install failed"; exit 1; }
export PYTHONPATH="$scratch/site"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || { log "rwedit install failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'transformers', transformers.__version__,
'peft', peft.__version__)" | tee -a "$OUT/log.txt"

step cuda_tests 120 python3 -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
step default_tests 240 python3 -m pytest -q -x -p no:cacheprovider
step quickstart 180 python3 -m rwedit quickstart --out "$scratch/qs" --set device=cuda --quiet
cp "$scratch/qs"/report.md "$OUT/quickstart_report.md" 2>/dev/null
step pair_pass 120 python3 benchmarks/bench_pair_pass.py --skip-naive --results "$OUT/pair_pass.json"
step grid 150 python3 benchmarks/bench_probes.py --parts grid --layers 0,1,2,3 --repeats 1 --profile never \
  --no-alternatives --results "$OUT/probes.json"
log "done; figures in $OUT (steps.tsv: each step's exit code and wall time)"
