#!/usr/bin/env bash
# The GPU check, one script inside 8 minutes on one GPU: is the baseline at the memory wall there
# too, and are the methods still exact in fp16?
#
#   1. `specbench profile` of SmolLM2 in fp16, eager and --compile: the one-token step against
#      the device-to-device copy bandwidth, and the block costs c(n);
#   2. the built-in benchmark (a short run: 2 questions a subtask, every method) in fp16, eager;
#   3. SmolLM2 on the official questions (1 a subtask, 128 new tokens), vanilla, PLD, REST,
#      Lookahead and Token Recycling (the methods that need no trained add-on), in fp16, eager
#      and --compile (static shapes and CUDA graphs: engine/static.py); the two runs' tokens
#      are compared at the end.
#
# Needs a CUDA build of torch in $PYTHON's environment (the venv below sees it through
# --system-site-packages; nothing is installed over it). Everything lands under $OUT (default
# results/gpu-check), the logs included.
#
#   benchmarks/gpu_check.sh [question.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-results/gpu-check}
BENCH=${1:-../shared/data/spec_bench/question.jsonl}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -x .venv-gpu/bin/specbench ] || {
    "$PYTHON" -m venv --system-site-packages .venv-gpu
    .venv-gpu/bin/python -m pip install -q -e ".[gguf]"
}
.venv-gpu/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
run() { echo "+ $*" | tee -a "$OUT/log"; timeout "$1" "${@:2}" 2>&1 | tee -a "$OUT/log"; }
run 60 .venv-gpu/bin/specbench profile --model smollm2 --device cuda --dtype fp16 \
    --contexts 256 --out "$OUT/profile"
run 90 .venv-gpu/bin/specbench profile --model smollm2 --device cuda --dtype fp16 \
    --contexts 256 --sizes 1,2,4,8,16 --compile --out "$OUT/profile-compile"
run 90 .venv-gpu/bin/specbench run --device cuda --dtype fp16 --limit 2 --warmup 1 \
    --out "$OUT/builtin"
for mode in eager compile; do
    flag=$([ "$mode" = compile ] && echo --compile || true)
    run 100 .venv-gpu/bin/specbench run --model smollm2 --bench "$BENCH" --limit 1 \
        --max-new-tokens 128 --device cuda --dtype fp16 --warmup 1 $flag \
        --methods vanilla,pld,rest,lookahead,recycling --out "$OUT/smollm2-$mode"
done
# The compiled run's tokens against the eager run's, answer by answer.
.venv-gpu/bin/python - "$OUT" <<'PY' | tee -a "$OUT/log"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for path in sorted((out / "smollm2-eager" / "answers").glob("*.jsonl")):
    other = out / "smollm2-compile" / "answers" / path.name
    tokens = lambda p: [json.loads(l)["token_ids"] for l in p.read_text().splitlines()]
    if other.exists():
        a, b = tokens(path), tokens(other)
        print(f"{path.stem}: compiled equals eager on {sum(x == y for x, y in zip(a, b))}/{len(a)} answers")
PY
echo "gpu check done: $OUT"
