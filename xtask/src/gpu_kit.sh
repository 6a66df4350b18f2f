#!/usr/bin/env bash
# The GPU kit's script (written by `cargo xtask gpu-kit`): every CUDA check, then the
# benchmark rows, into REPORT_DIR/report.md. Runs on a machine with python3 and PyTorch
# (the one the kit was built for) and no Rust. Without CUDA it says so and exits 0 after
# the checks (which print what they skipped). Exit 1 when a check fails.
#
#   run.sh [REPORT_DIR]        (default: ./report beside this script)
#
# BASISNET_KIT_BUDGET_S caps the benchmarks' time (default 420 s, so that the whole run
# fits the 8 minutes a lent machine's call allows).
set -uo pipefail
KIT="$(cd "$(dirname "$0")" && pwd)"
OUT="$(mkdir -p "${1:-$KIT/report}" && cd "${1:-$KIT/report}" && pwd)"
REPORT="$OUT/report.md"
BUDGET="${BASISNET_KIT_BUDGET_S:-420}"
START=$(date +%s)

TORCH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null)"
if [ -z "$TORCH" ]; then
    echo "run.sh: python3 cannot import torch; the kit needs the PyTorch it was built for" >&2
    exit 1
fi
# libtorch and the CUDA libraries of the wheel (nvidia/*/lib beside torch).
LIBS="$TORCH/lib"
for d in "$(dirname "$TORCH")"/nvidia/*/lib; do
    [ -d "$d" ] && LIBS="$LIBS:$d"
done
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export BASISNET_SCRIPTS="$KIT/scripts"
# Both sides keep freed blocks in the process, as `cargo xtask bench` runs them.
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824

section() { printf '\n## %s\n\n' "$1" >>"$REPORT"; }
left() {
    local s=$((BUDGET - ($(date +%s) - START)))
    echo $((s > 1 ? s : 1))
}

{
    echo "# GPU kit report"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- kit: $(tr '\n' ' ' <"$KIT/BUILD")"
    echo "- python3 torch: $(python3 -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
    echo "- GPU: $(nvidia-smi -L 2>/dev/null | head -1 || true)"
    echo "- CPU cores: $(nproc)"
} >"$REPORT"
CUDA=$(python3 -c 'import torch; print(int(torch.cuda.is_available()))')
echo "- CUDA seen by PyTorch: $([ "$CUDA" = 1 ] && echo yes || echo no)" >>"$REPORT"

failed=0
section "CUDA checks"
for t in cuda-models cuda-train; do
    echo "### $t" >>"$REPORT"
    echo '```' >>"$REPORT"
    timeout 240 "$KIT/bin/$t" >>"$REPORT" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        failed=1
        echo "exit status $rc" >>"$REPORT"
    fi
    echo '```' >>"$REPORT"
done

if [ "$CUDA" != 1 ]; then
    echo "CUDA is absent here: the checks above skipped their cases and no benchmark ran." >>"$REPORT"
    cat "$REPORT"
    exit $failed
fi

section "Training step (bf16 autocast, batch 256, 224 px, batch resident on the GPU)"
for model in basisnet-mv3 mobilenet-v3-large; do
    echo '```' >>"$REPORT"
    BASISNET_BENCH_DEVICE=cuda BASISNET_BENCH_BATCH=256 BASISNET_BENCH_PRECISION=bf16 \
        BASISNET_BENCH_MODEL=$model BASISNET_BENCH_STEPS=20 \
        timeout "$(left)" "$KIT/bin/train-step" --bench >>"$REPORT" 2>&1 \
        || echo "exit status $?" >>"$REPORT"
    echo '```' >>"$REPORT"
done

section "Inference (224 px)"
timeout "$(left)" "$KIT/bin/xtask" bench --binary "$KIT/bin/basisnet" --scripts "$KIT/scripts" \
    --batches 1,256 --iters 20 --rounds 1 --skip-compile --out "$OUT/inference" >"$OUT/inference.log" 2>&1 \
    || echo "inference rows stopped (exit status $?); the log's tail:" >>"$REPORT"
if [ -f "$OUT/inference/report.md" ]; then
    sed -n '/^## Summary/,$p' "$OUT/inference/report.md" >>"$REPORT"
else
    tail -n 20 "$OUT/inference.log" >>"$REPORT"
fi

section "Input pipeline (JPEG, 224 px, CPU workers)"
for workers in 2 16; do
    echo '```' >>"$REPORT"
    BASISNET_BENCH_IMAGES="$KIT/data/imagenet" BASISNET_BENCH_WORKERS=$workers \
        timeout "$(left)" "$KIT/bin/pipeline" --bench >>"$REPORT" 2>&1 \
        || echo "exit status $?" >>"$REPORT"
    echo '```' >>"$REPORT"
done
echo >>"$REPORT"
echo "Total: $(($(date +%s) - START)) s." >>"$REPORT"
cat "$REPORT"
exit $failed
