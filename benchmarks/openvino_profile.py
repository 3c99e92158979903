"""Benchmark: where OpenVINO's time goes in the ensemble, per operation type and kernel, at batch 1 and 8.

The file is compiled as seg-run's OpenVINO backend compiles it (f32 float layers, latency hint,
one stream, `--threads`), with OpenVINO's per-node performance counters on, run `--calls` times
after warm-up on random slices of the graph's input; each node's real time is summed per call and
the medians are grouped by the node's type and by the kernel OpenVINO picked for it
(`exec_type`, e.g. "jit_avx2_I8", "jit_avx2_FP32", "ref_..."): the profile the speed levers
should start from (float islands show as FP32 kernels inside the int8 file).

    python benchmarks/openvino_profile.py ARTIFACTS [--precision int8] [--threads 2] [--calls 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description
from brainseg.runtime.backends.openvino import COMPUTE, DEVICE, import_openvino


def _profile(compiled, batch: np.ndarray, calls: int) -> dict[str, dict[str, float]]:
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer({0: batch})
    by_type, by_kernel, totals, walls = defaultdict(list), defaultdict(list), [], []
    for _ in range(calls):
        started = time.perf_counter()
        request.infer({0: batch})
        walls.append((time.perf_counter() - started) * 1000)
        types, kernels = defaultdict(float), defaultdict(float)
        for node in request.profiling_info:
            ms = node.real_time.total_seconds() * 1000
            types[node.node_type] += ms
            kernels[node.exec_type] += ms
        for name, ms in types.items():
            by_type[name].append(ms)
        for name, ms in kernels.items():
            by_kernel[name].append(ms)
        totals.append(sum(types.values()))
    total = statistics.median(totals)

    def table(groups: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        rows = {name: statistics.median(values) for name, values in groups.items()}
        return {name: {"ms": round(ms, 3), "share": round(ms / total, 4)}
                for name, ms in sorted(rows.items(), key=lambda item: -item[1]) if ms >= 0.005}

    return {"wall_ms_median": round(statistics.median(walls), 3), "nodes_ms_median": round(total, 3),
            "by_node_type": table(by_type), "by_kernel": table(by_kernel)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--precision", default="int8", choices=("fp32", "int8"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    ov = import_openvino()
    manifest = Manifest.load(args.artifacts)
    path = manifest.path_for(args.precision, "cpu")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), DEVICE, {
        "INFERENCE_PRECISION_HINT": COMPUTE[args.precision], "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": args.threads, "PERF_COUNT": True})
    spec = manifest.input
    rng = np.random.default_rng(0)
    profiles = {}
    for batch in (int(b) for b in args.batches.split(",")):
        images = rng.integers(0, 256, (batch, spec.height, spec.width, spec.channels)).astype(spec.dtype)
        profiles[f"batch {batch}"] = _profile(compiled, images, args.calls)
    emit({"machine": cpu_description(), "openvino": ov.__version__.split("-")[0], "file": path.name,
          "precision": args.precision, "threads": args.threads, "calls": args.calls, "profiles": profiles}, args.out)


if __name__ == "__main__":
    main()
