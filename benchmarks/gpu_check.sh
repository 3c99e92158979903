#!/usr/bin/env bash
# One-shot GPU check for a lent GPU machine (H100/H200 with CUDA, PyTorch, CuPy and cuda-python;
# no TensorRT, no onnxruntime-gpu, no network). Under 8 minutes in all.
#
#   bash benchmarks/gpu_check.sh [RESULTS_PARENT]      # from the repo root; PYTHON=python3 by default
#
# Nothing is installed: brainseg is imported from this checkout (PYTHONPATH=.), with the machine's
# own torch, CuPy and cuda-python. Results go to RESULTS_PARENT/<gpu>/ (default benchmarks/results/<gpu>/),
# <gpu> being the folder seg-bench names for GPU 0 (torch.cuda.get_device_name), e.g. gpu-h200. On the device tool, pass
# "$OUT" as RESULTS_PARENT so that the files come back.
#
# Each part is its own process with its own time limit (`timeout`), so a hung part cannot eat the
# others' time, and each writes its own JSON even when it fails (status, error, traceback; rows
# measured before a time limit are kept and the file says "timed_out"):
#   cuda-plumbing.json  brainseg's TensorRTBackend (pinned buffers, async copies on one stream, CUDA
#                       events, CUDA-graph capture and replay) with a CuPy kernel standing in for the
#                       engine; outputs checked against numpy; copy-in/kernel/copy-out ms per batch (1, 8, 64)
#   torch-latency.json  the exported ensemble module (3 models, sigmoid mean) in PyTorch, fp32 and fp16,
#                       channels_last, eager and CUDA graph, 128 and 256 px: batch-1 median and p90 ms
#                       (CUDA events), slices/s at batch 64. The peer for any TensorRT number.
#   train-epoch.json    one epoch of each model (fp16 autocast, gradient scaler) on 1024 synthetic
#                       256 px slices: seconds, images/s, peak GPU memory
#   <part>.log          each part's stdout and stderr
# Without segmentation-models-pytorch only the classic U-Net runs; the JSON names what was skipped and why.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SCRIPT=benchmarks/gpu_check.py

slug=$(timeout -k 5 45 "$PYTHON" "$SCRIPT" --gpu-slug 2>/dev/null | tail -n 1)
RESULTS="${1:-benchmarks/results}/${slug:-gpu-unknown}"
mkdir -p "$RESULTS"
echo "gpu_check: results in $RESULTS"

# run_part PART LIMIT_S [options]: the part gets LIMIT_S - 15 s of rows, then its process is stopped.
run_part() {
    local part=$1 limit=$2 rc
    shift 2
    echo "gpu_check: $part (at most ${limit} s)"
    timeout -k 5 "$limit" "$PYTHON" "$SCRIPT" --part "$part" --out "$RESULTS" --budget-s $((limit - 15)) "$@" \
        >"$RESULTS/$part.log" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
        "$PYTHON" "$SCRIPT" --part "$part" --out "$RESULTS" --mark-unfinished "$rc" >>"$RESULTS/$part.log" 2>&1
    fi
    echo "gpu_check: $part exited $rc"
}

run_part cuda-plumbing 60 --sizes 128,256 --plumbing-batches 1,8,64 --plumbing-reps 30
run_part torch-latency 170 --sizes 128,256 --batch 64 --precisions fp32,fp16 --modes eager,cuda-graph
run_part train-epoch 150 --train-size 256 --train-batch 16 --train-slices 1024

"$PYTHON" - "$RESULTS" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    data = json.loads(path.read_text())
    print(f"{path.name}: {data.get('status')}, {len(data.get('rows', []))} rows"
          + (f", error: {data['error']}" if data.get("error") else ""))
EOF
