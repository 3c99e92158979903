"""Benchmark: seg-run end to end (decode, inference, writing) against bare inference, same batch.

Target: on ONNX Runtime CPU with the INT8 ensemble, seg-run's end-to-end throughput
over 1,000 sample slices is at least 80% of the bare inference throughput at the same batch size.

The scans are built-in sample patients (256x256 RGB TIFF slices in the kaggle_3m layout; the
masks beside them are ignored), resized to the graph's input by the readers and written back at
256x256 as mask and overlay PNGs plus results.csv. "Bare" is the same backend object's `infer`
on batches already decoded and resized in memory, timed over the same slices.

    python benchmarks/run_throughput.py ARTIFACTS [--slices 1000] [--batch-size 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description
from brainseg.data.synthetic.sample import SampleSpec, cached_sample_dataset
from brainseg.runtime.batch.pipeline import RunOptions, segment
from brainseg.runtime.io import discovery
from brainseg.runtime.segmenter import Segmenter


def _bare(artifacts: Path, scans_dir: Path, options: RunOptions) -> dict:
    """The same Segmenter seg-run opens, on slices already read: inference alone."""
    manifest = Manifest.load(artifacts)
    scans, _ = discovery.discover([scans_dir], manifest.input.modalities)
    with Segmenter(manifest, options) as segmenter:
        images = np.concatenate([segmenter.steps.read(scan)[1] for scan in scans])
        segmenter.infer(images[:options.batch_size])  # warm-up
        started = time.perf_counter()
        for start in range(0, len(images), options.batch_size):
            segmenter.infer(images[start : start + options.batch_size])
        seconds = time.perf_counter() - started
    return {"slices": len(images), "seconds": round(seconds, 3), "slices_per_s": round(len(images) / seconds, 2),
            "file": segmenter.choice.file, "precision": segmenter.precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--spin", action="store_true", help="ONNX Runtime threads spin (seg-run --spin), both sides")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    per_patient = 16
    sample = cached_sample_dataset(SampleSpec(patients=-(-args.slices // per_patient), slices=per_patient))
    with tempfile.TemporaryDirectory() as tmp:
        scans_dir = Path(tmp) / "scans"
        scans_dir.symlink_to(sample, target_is_directory=True)
        options = RunOptions(backend="onnxruntime", precision=args.precision, batch_size=args.batch_size,
                             readers=args.readers, spinning=args.spin)
        bare = _bare(args.artifacts, scans_dir, options)
        summary = segment([scans_dir], args.artifacts, Path(tmp) / "out", options)
        shutil.rmtree(Path(tmp) / "out")
    end_to_end = summary.slices / summary.timings_s["wall"]
    result = {
        "machine": cpu_description(),
        "artifacts": str(args.artifacts), "batch_size": args.batch_size, "readers": args.readers,
        "onnxruntime_threads_spin": args.spin,
        "bare_inference": bare,
        "end_to_end": {"slices": summary.slices, "scans": summary.done, "timings_s": summary.timings_s,
                       "slices_per_s": round(end_to_end, 2), "backend": summary.backend},
        "end_to_end_share_of_bare": round(end_to_end / bare["slices_per_s"], 3),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
