#!/usr/bin/env bash
# One device call on a GPU machine: the GPU suite, then the GPU commands of BENCHMARKS.md (each
# benchmark process holds its own plain-loop anchors), every result under $OUT for committing to
# benchmarks/results/. Needs no make and no virtual environment: python3 with torch, torchvision,
# numpy and PIL, and pytest from the wheels `make gpu-wheels` puts in .gpu-wheels/ (carried).
#
#   bash benchmarks/gpu_session.sh                       # every stage, within the time budget
#   GPU_SESSION_STAGES="suite packing" bash benchmarks/gpu_session.sh
#   GPU_SESSION_BUDGET_S=1500 bash benchmarks/gpu_session.sh   # a longer lease
#
# Stages run in this order, most wanted first; a stage that would start with less than
# GPU_SESSION_MIN_STAGE_S left is skipped and named in summary.json, so a second call can run
# the rest (GPU_SESSION_STAGES). Exit status: 3 no CUDA device, 1 a stage failed, else 0.
set -u
cd "$(dirname "$0")/.."

OUT="${OUT:-benchmarks/results/gpu-session-$(date +%F)}"
PY="${PYTHON:-python3}"
BUDGET="${GPU_SESSION_BUDGET_S:-540}"
MIN_STAGE="${GPU_SESSION_MIN_STAGE_S:-45}"
STAGES="${GPU_SESSION_STAGES:-suite packing training imagenet_e2e packing_more compile interpolation gang}"
TAG="$(date +%F)"
mkdir -p "$OUT"

WHEELS="$(ls -d "$PWD"/.gpu-wheels/*.whl 2>/dev/null | tr '\n' ':')"
export PYTHONPATH="$PWD:${WHEELS}${PYTHONPATH:-}"
# Before the first CUDA call of every process started here (trainers.determinism reads it too).
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
export PYTHONDONTWRITEBYTECODE=1

{
    echo "date: $(date -Is)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv 2>&1 || echo "nvidia-smi: not found"
    nproc
    "$PY" -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.version.cuda)"
} > "$OUT/environment.txt" 2>&1

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"; then
    echo "gpu_session: no CUDA device is visible to $PY (torch.cuda.is_available() is False); nothing was run" >&2
    cat "$OUT/environment.txt" >&2
    exit 3
fi

START=$SECONDS
RESULTS="$OUT/stages.tsv"
: > "$RESULTS"
failed=0

stage() {  # stage NAME COMMAND...: run it with what is left of the budget, record the outcome
    local name=$1; shift
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt "$MIN_STAGE" ]; then
        printf '%s\tskipped (budget: %ss left)\t-\t%s\n' "$name" "$left" "$*" >> "$RESULTS"
        return
    fi
    local t0=$SECONDS
    timeout --signal=INT --kill-after=20 "$left" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    printf '%s\trc=%s\t%ss\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$*" >> "$RESULTS"
    [ "$rc" -eq 0 ] || failed=1
    tail -n 40 "$OUT/$name.txt"
}

# A command, not a shell function: `timeout` executes its argument as a program, and a function
# is no program (every benchmark stage used to exit 127 at once).
BENCH=("$PY" -m benchmarks.run --device cuda)
# GPUs for the gang stages (one rank per GPU); they are skipped on a machine with fewer than 2.
RANKS="${GPU_SESSION_RANKS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')}"

gang_stage() {  # gang_stage NAME ARGS...: a gang benchmark on RANKS GPUs, or a skip naming why
    local name=$1; shift
    if [ "$RANKS" -lt 2 ]; then
        printf '%s\tskipped (%s GPU: a gang needs 2 or more)\t-\t%s\n' "$name" "$RANKS" "${BENCH[*]} $*" >> "$RESULTS"
        return
    fi
    stage "$name" "${BENCH[@]}" --ranks "$RANKS" "$@"
}

for s in $STAGES; do
    case $s in
        suite) stage suite "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --junitxml "$OUT/gpu-suite.xml" ;;
        packing) stage packing "${BENCH[@]}" --sections packing --pack 8,32 --pack-models cifar_resnet_20 --repeats 2 --json "$OUT/packing-$TAG.json" ;;
        training) stage training "${BENCH[@]}" --sections training --models cifar_resnet_20,resnet18,resnet50 --repeats 2 --json "$OUT/training-$TAG.json" ;;
        imagenet_e2e) stage imagenet_e2e "${BENCH[@]}" --sections imagenet_e2e --models resnet50,resnet18 --json "$OUT/imagenet-e2e-$TAG.json" ;;
        packing_more) stage packing_more "${BENCH[@]}" --sections packing --pack 8,32 --pack-models cifar_vgg_16,mlp_300_100 --repeats 2 --json "$OUT/packing-more-$TAG.json" ;;
        compile) stage compile "${BENCH[@]}" --sections training,imagenet_e2e --models cifar_resnet_20,resnet18 --compile --repeats 2 --json "$OUT/compile-$TAG.json" ;;
        interpolation) stage interpolation "${BENCH[@]}" --sections interpolation --json "$OUT/interpolation-$TAG.json" ;;
        # An ImageNet level on all the node's GPUs (8 on an 8-GPU node), ranks fed by the JPEG
        # folder loader (each decodes its slice), against one GPU; SyncBatchNorm vs all-reduce BN.
        gang) gang_stage gang --sections gang --models resnet50 --gang-input jpeg,synthetic --json "$OUT/gang-$TAG.json" ;;
        *) echo "gpu_session: unknown stage $s (valid: suite packing training imagenet_e2e packing_more compile interpolation gang)" >&2; exit 2 ;;
    esac
done

"$PY" - "$RESULTS" "$OUT/summary.json" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
summary = [{"stage": r[0], "outcome": r[1], "seconds": r[2], "command": r[3]} for r in rows]
json.dump({"stages": summary}, open(sys.argv[2], "w"), indent=2)
for s in summary:
    print(f"{s['stage']:<14} {s['outcome']:<28} {s['seconds']:>6}  {s['command']}")
EOF
exit $failed
