"""Benchmark: `seg-run --ray local` against `seg-run` on the same slices, same options, same machine.

Target: on ONNX Runtime CPU, `--ray local` segments the 1,000 sample slices at no less than 80% of
the slices/s of the in-process run, and writes the same masks.

The scans are the built-in sample patients (256x256 RGB TIFF slices in the kaggle_3m layout, 16 per
patient). Each repeat runs the in-process pipeline and then the Ray run (alternating, so that the
machine's load affects both alike), each into a fresh output folder. Two figures per run:

- `call_slices_per_s`: slices over the whole `segment()` call, Ray's start and stop included;
- `run_slices_per_s`: the run's own figure from summary.json (the in-process run leaves out opening
  its backend; the Ray run leaves out starting Ray and checking the backend, and includes starting
  its actors).

The ratio (`ray_share_of_local`) is that of the medians of `call_slices_per_s`. After each pair,
every mask PNG of the Ray run is compared byte for byte with the in-process run's.

    python benchmarks/ray_throughput.py ARTIFACTS [--slices 1000] [--batch-size 8] [--repeats 2]
        [--actors 1] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _report import emit

from brainseg.bench.environment import cpu_description
from brainseg.data.synthetic.sample import SampleSpec, cached_sample_dataset
from brainseg.runtime.batch.pipeline import RunOptions, segment

PER_PATIENT = 16


def _timed(scans_dir: Path, artifacts: Path, out: Path, options: RunOptions) -> dict:
    started = time.perf_counter()
    summary = segment([scans_dir], artifacts, out, options)
    seconds = time.perf_counter() - started
    return {"slices": summary.slices, "scans": summary.done, "call_s": round(seconds, 3),
            "call_slices_per_s": round(summary.slices / seconds, 2), "run_slices_per_s": summary.slices_per_s,
            "timings_s": summary.timings_s, "backend": summary.backend.get("backend"), "precision": summary.precision}


def _same_masks(first: Path, second: Path) -> bool:
    masks = sorted(path.relative_to(first) for path in (first / "masks").rglob("*.png"))
    return bool(masks) and all((second / m).is_file() and (first / m).read_bytes() == (second / m).read_bytes()
                               for m in masks)


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--actors", type=int, default=1, help="seg-run --ray-actors")
    parser.add_argument("--work", type=Path, default=None, help="where the outputs go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sample = cached_sample_dataset(SampleSpec(patients=-(-args.slices // PER_PATIENT), slices=PER_PATIENT))
    common = {"backend": "onnxruntime", "precision": args.precision, "batch_size": args.batch_size}
    local_options, ray_options = RunOptions(**common), RunOptions(**common, ray="local", ray_actors=args.actors)
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    identical = []
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        scans_dir = Path(tmp) / "scans"
        scans_dir.symlink_to(sample, target_is_directory=True)
        for repeat in range(args.repeats):
            outs = {name: Path(tmp) / f"{name}{repeat}" for name in runs}
            runs["local"].append(_timed(scans_dir, args.artifacts, outs["local"], local_options))
            runs["ray"].append(_timed(scans_dir, args.artifacts, outs["ray"], ray_options))
            identical.append(_same_masks(outs["local"], outs["ray"]))
            for out in outs.values():
                shutil.rmtree(out)
    local, ray = _median(runs["local"], "call_slices_per_s"), _median(runs["ray"], "call_slices_per_s")
    emit({
        "machine": cpu_description(),
        "artifacts": str(args.artifacts), "batch_size": args.batch_size, "ray_actors": args.actors,
        "runs": runs,
        "local_slices_per_s": local, "ray_slices_per_s": ray,
        "ray_share_of_local": round(ray / local, 3),
        "target_share": 0.8,
        "masks_identical": all(identical),
    }, args.out)


if __name__ == "__main__":
    main()
