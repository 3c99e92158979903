"""One-shot GPU check: the PyTorch peer of a TensorRT engine, a training epoch, the TensorRT backend's plumbing.

    python benchmarks/gpu_check.py --part torch-latency|train-epoch|cuda-plumbing --out DIR [--device cuda|cpu]

`benchmarks/gpu_check.sh` runs each part in its own process and says what each measures. A part
writes `<part>.json` under `--out` and rewrites it after every row, so one killed by its time
limit keeps what it measured (the shell script then marks it with `--mark-unfinished`). torch and
CuPy are imported inside the parts: `--mark-unfinished` and `--gpu-slug` stay quick.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from gpu_check_record import PartRecord, mark_unfinished

PARTS = ("torch-latency", "train-epoch", "cuda-plumbing")
SMP_MODELS = ("fpn", "resunet")  # segmentation-models-pytorch builds these; unet is brainseg's own


def gpu_slug(name: str) -> str:
    """"NVIDIA H200" -> "gpu-h200": the folder seg-bench writes that GPU's results to, so both land together."""
    from brainseg.bench.environment import gpu_folder

    return gpu_folder(name)


# --- torch, shared by torch-latency and train-epoch --------------------------------------------------


def _torch_device(name: str, record: PartRecord):
    """The torch device, after recording torch's versions and settings in the part's JSON."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA device here")
    device = torch.device(name)
    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": name}
    try:  # brainseg.data.preprocess imports OpenCV to resize slices; nothing here resizes (slices are made to size)
        import cv2  # noqa: F401
    except ImportError as err:
        sys.modules["cv2"] = types.ModuleType("cv2")  # empty: a call into it would fail, and be recorded
        info["opencv"] = f"not importable ({err}); an empty module stood in for it"
    if name == "cuda":
        torch.backends.cudnn.benchmark = True
        info.update(gpu=torch.cuda.get_device_name(device), cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=True, cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,  # fp32 convs as TF32
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    record.data["environment"] = info
    return device


def _call_ms(run, device) -> float:
    """One call of `run`, in ms: CUDA events around it on a GPU, the host clock on a CPU."""
    import torch

    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000


def _guarded(record: PartRecord, label: dict, measure) -> None:
    """Add `measure()`'s row; its error (out of memory, a failed capture) becomes that row's error, not the part's."""
    import torch

    try:
        record.add(measure())
    except Exception as err:  # one failed configuration must not lose the others
        record.add({**label, "error": f"{type(err).__name__}: {err}"})
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- part: torch-latency --------------------------------------------------------------------------------


def _ensemble(precision: str, device, record: PartRecord, preset: str):
    """brainseg's export module (EnsembleGraph) over the models `preset` builds, random weights, channels_last.

    fp16: the members in float16, pre- and post-processing in float32, as in the fp16 ONNX file.
    Without segmentation-models-pytorch, only the models that can be built, each skip recorded.
    """
    import torch

    from brainseg.data.preprocess import Normalisation
    from brainseg.export.graphs import EnsembleGraph
    from brainseg.train.config import make_config
    from brainseg.train.models.registry import MODELS, build_model, model_options

    cfg, members = make_config(preset), []
    torch.manual_seed(0)
    for name in MODELS:
        try:
            members.append(build_model(name, in_channels=3, classes=1, options=model_options(name, cfg)))
        except ImportError as err:
            record.skip(name, f"segmentation-models-pytorch is not importable here ({err})")
    graph = EnsembleGraph(members, weights=[1.0] * len(members), norm=Normalisation(kind="uint8"),
                          input_dtype="uint8", threshold=0.5)
    record.data["members"] = [name for name in MODELS if name not in record.data["skipped"]]
    graph = graph.with_compute_dtype(torch.float16) if precision == "fp16" else graph
    graph = graph.to(device)
    graph.members.to(memory_format=torch.channels_last)
    return graph


def _graph_runner(graph, image) -> tuple:
    """`graph(image)` captured as a CUDA graph (a call copies `image` in and replays it); and max |replay - eager|."""
    import torch

    static = image.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream: cuDNN autotuning, lazy set-up
        for _ in range(3):
            graph(static)
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        outputs = graph(static)

    def replay():
        static.copy_(image)
        cuda_graph.replay()
        return outputs

    return replay, (replay()[0] - graph(image)[0]).abs().max().item()


def _latency_row(graph, args, device, size: int, precision: str, mode: str) -> dict:
    import torch

    from brainseg.bench.stats import summarize

    row = {"size": size, "precision": precision, "mode": mode, "channels_last": True}
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for batch in (1, args.batch):
        generator = torch.Generator().manual_seed(batch)
        image = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator).to(device)
        run = lambda image=image: graph(image)  # noqa: E731
        if mode == "cuda-graph":
            run, row[f"batch{batch}_max_abs_diff_vs_eager"] = _graph_runner(graph, image)
        for _ in range(args.warmup):
            run()
        sync()
        if batch == 1:
            stats = summarize([_call_ms(run, device) for _ in range(args.iterations)])
            row["batch1"] = {"median_ms": round(stats.p50_ms, 3), "p90_ms": round(stats.p90_ms, 3),
                             "mean_ms": round(stats.mean_ms, 3), "cv": round(stats.cv, 4), "calls": stats.count}
            continue
        started = time.perf_counter()
        for _ in range(args.throughput_iterations):
            run()
        sync()
        seconds = time.perf_counter() - started
        row[f"batch{batch}"] = {"calls": args.throughput_iterations, "seconds": round(seconds, 4),
                                "slices_per_s": round(batch * args.throughput_iterations / seconds, 1)}
    return row


def torch_latency(args, record: PartRecord) -> None:
    """Batch-1 latency and batch-`--batch` slices/s of the ensemble; input already on the device (no host copies)."""
    import torch

    device = _torch_device(args.device, record)
    graphs = {precision: _ensemble(precision, device, record, args.preset) for precision in args.precisions}
    with torch.inference_mode():
        for size in args.sizes:
            for (precision, graph), mode in ((item, mode) for item in graphs.items() for mode in args.modes):
                what = f"{size}px {precision} {mode}"
                if mode == "cuda-graph" and device.type != "cuda":
                    record.skip(what, "CUDA graphs need a CUDA device")
                elif not record.out_of_time(what):
                    _guarded(record, {"size": size, "precision": precision, "mode": mode},
                             lambda graph=graph, precision=precision, mode=mode, size=size:
                             _latency_row(graph, args, device, size, precision, mode))


# --- part: train-epoch ----------------------------------------------------------------------------------


def synthetic_slices(count: int, size: int, seed: int = 0):
    """(images (N, S, S, 3) uint8, masks (N, S, S, 1) uint8): noise, and on every other slice a brighter disc."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 200, (count, size, size, 3), dtype=np.uint8)
    masks = np.zeros((count, size, size, 1), np.uint8)
    rows, cols = np.mgrid[:size, :size]
    for index in range(0, count, 2):
        row, col = rng.uniform(0.25, 0.75, 2) * size
        disc = (rows - row) ** 2 + (cols - col) ** 2 < (rng.uniform(0.05, 0.2) * size) ** 2
        images[index][disc] += 55
        masks[index, ..., 0][disc] = 1
    return images, masks


def _train_row(name: str, index: int, table, val, cfg, device) -> dict:
    """One epoch of brainseg's Trainer; time from the start to the last step's end (validation not timed)."""
    import torch

    from brainseg.data.preprocess import Normalisation
    from brainseg.train.distributed import DistContext
    from brainseg.train.loop import ModelJob, Trainer

    steps, peak, cuda = [], {}, device.type == "cuda"
    with tempfile.TemporaryDirectory() as folder:
        job = ModelJob(name=name, index=index, train=table, val=[val], norm=Normalisation(kind="uint8"),
                       in_channels=3, classes=1, out_dir=Path(folder))
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        trainer = Trainer(job, cfg, DistContext(0, 1, device))

        def progress(**fields) -> None:
            if "loss" in fields:  # a step ended, and its loss.item() waited for the GPU
                steps.append(time.perf_counter())
                if cuda:
                    peak.update(allocated=torch.cuda.max_memory_allocated(device) / 2**20,
                                reserved=torch.cuda.max_memory_reserved(device) / 2**20)

        started = time.perf_counter()
        trainer.fit(progress)
    seconds = steps[-1] - started
    steady = (len(steps) - 1) * cfg.batch_size / (steps[-1] - steps[0]) if len(steps) > 2 else None
    return {"model": name, "steps": len(steps), "batch_size": cfg.batch_size, "size": cfg.img_size,
            "seconds_per_epoch": round(seconds, 3), "images_per_s": round(len(steps) * cfg.batch_size / seconds, 1),
            "images_per_s_after_first_step": None if steady is None else round(steady, 1),
            "autocast": str(trainer.amp_dtype), "grad_scaler": trainer.scaler.is_enabled(),
            "peak_gpu_memory_allocated_mib": round(peak["allocated"]) if peak else None,
            "peak_gpu_memory_reserved_mib": round(peak["reserved"]) if peak else None}


def train_epoch(args, record: PartRecord) -> None:
    """One epoch per model as `--preset` builds it, on synthetic slices (the sample needs nilearn's templates)."""
    import importlib.util

    from brainseg.data.volume import Volume
    from brainseg.train.config import make_config
    from brainseg.train.models.registry import MODELS
    from brainseg.train.slices import SliceTable

    device = _torch_device(args.device, record)
    if device.type != "cuda":
        record.skip("peak GPU memory", "no CUDA device: --device cpu")
    cfg = make_config(args.preset, epochs=1, patience=1, img_size=args.train_size, batch_size=args.train_batch,
                      amp=args.amp)
    record.data["train_config"] = json.loads(cfg.to_json())
    images, masks = synthetic_slices(args.train_slices, args.train_size)
    table = SliceTable(images=images, masks=masks, has_tumour=masks.reshape(len(masks), -1).any(axis=1))
    count = min(8, len(images))
    val = Volume("val", images[:count], masks[:count], [f"val:{i}" for i in range(count)], source="synthetic")
    record.data["data"] = f"synthetic: {len(images)} slices of {args.train_size} px, a disc on every other one"
    smp_missing = importlib.util.find_spec("segmentation_models_pytorch") is None
    for index, name in enumerate(MODELS):
        if name in SMP_MODELS and smp_missing:
            record.skip(name, "segmentation-models-pytorch is not importable here")
        elif not record.out_of_time(name):
            _guarded(record, {"model": name}, lambda name=name, index=index:
                     _train_row(name, index, table, val, cfg, device))


# --- command line ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints, names = (lambda text: [int(v) for v in text.split(",") if v]), (lambda text: text.split(","))
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add = parser.add_argument
    add("--part", choices=PARTS)
    add("--out", type=Path, help="folder for <part>.json")
    add("--device", choices=("cuda", "cpu"), default="cuda")
    add("--sizes", type=ints, default=[128, 256], help="slice sides in px (torch-latency, cuda-plumbing)")
    add("--batch", type=int, default=64, help="torch-latency: the throughput batch")
    add("--precisions", type=names, default=["fp32", "fp16"])
    add("--modes", type=names, default=None, help="eager,cuda-graph (default: both on cuda, eager on cpu)")
    add("--preset", default="full", help="seg-train preset whose model options are used (tests: tiny)")
    add("--warmup", type=int, default=10)
    add("--iterations", type=int, default=100, help="timed batch-1 calls")
    add("--throughput-iterations", type=int, default=20)
    add("--train-size", type=int, default=256)
    add("--train-batch", type=int, default=16)
    add("--train-slices", type=int, default=1024)
    add("--amp", choices=("fp16", "bf16", "off", "auto"), default=None,
        help="train-epoch autocast (default: fp16, so the gradient scaler, on cuda; auto on cpu)")
    add("--plumbing-batches", type=ints, default=[1, 8, 64])
    add("--plumbing-reps", type=int, default=30)
    add("--budget-s", type=float, default=1e9, help="skip the rows left after this many seconds")
    add("--gpu-slug", action="store_true", help="print the results folder name for GPU 0, and exit")
    add("--mark-unfinished", type=int, metavar="EXIT_CODE", help="record that --part's process exited early")
    args = parser.parse_args(argv)
    if not args.gpu_slug and (args.part is None or args.out is None):
        parser.error("--part and --out are required")
    args.modes = args.modes or (["eager", "cuda-graph"] if args.device == "cuda" else ["eager"])
    args.amp = args.amp or ("fp16" if args.device == "cuda" else "auto")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gpu_slug:
        import torch

        print(gpu_slug(torch.cuda.get_device_name(0)))
        return 0
    if args.mark_unfinished is not None:
        mark_unfinished(args.out, args.part, args.mark_unfinished)
        return 0
    record = PartRecord(args.out, args.part, {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                        args.budget_s)
    if args.part == "cuda-plumbing":
        from gpu_check_plumbing import cuda_plumbing as run
    else:
        run = torch_latency if args.part == "torch-latency" else train_epoch
    try:
        run(args, record)
    except Exception as err:  # written into the part's JSON; the exit code says it failed
        return record.finish(err)
    return record.finish(None)


if __name__ == "__main__":
    sys.exit(main())
