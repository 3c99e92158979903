"""The Segmenter: an artifacts folder opened once, the one way every command runs an export.

seg-run (locally and in each Ray actor), seg-eval, seg-serve, seg-bench and the benchmark scripts
each hold a `Segmenter`. Opening one loads the manifest, resolves the post-processing (the folder's
flip TTA and component rule unless the options override them) and the backend, precision and file
(`brainseg.runtime.backends`: decided once, with the reason in `describe()`). Then:

- `infer(batch)`: (n, h, w, C) slices at the graph's input size -> the graph's outputs by name,
  each (n, K, h, w), flip TTA included when it is on; the raw call a batcher or a benchmark makes.
- `predict(image)`: one scan's (S, H, W, C) slices as a reader gives them -> its `Prediction` at
  that size: resize to the graph, infer in batches of `batch_size`, resize back, threshold again,
  component rule. What seg-run writes for one scan, and what seg-eval scores.

Arrays returned are the caller's: backends return arrays of their own (`Backend`), and nothing
here keeps a reference to them. The steps around the graph that need no backend (reading a scan
into the graph's form, finishing its outputs) are `ScanSteps`, which Ray's read and write tasks
run without opening a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from brainseg.artifacts.layout import DISAGREEMENT, MASK, PROBABILITY
from brainseg.artifacts.manifest import InputSpec, Manifest
from brainseg.artifacts.sessions import DEFAULT_SPINNING
from brainseg.choices import BackendName, ComponentRule, PrecisionName, TtaMode
from brainseg.data.brats import DEFAULT_CONVENTION, LABEL_CONVENTIONS
from brainseg.data.preprocess import resize_back, resize_slices
from brainseg.errors import ConfigError
from brainseg.formats.limits import MAX_PIXELS, MAX_VOXELS, SizeLimits
from brainseg.postprocess import PostProcessing
from brainseg.runtime.backends import Backend, BackendSettings, Choice, open_backend, open_file
from brainseg.runtime.backends.tta import FlipTTA
from brainseg.runtime.io import loading
from brainseg.runtime.io.scans import Prediction, Scan, ScanData

log = logging.getLogger("brainseg.runtime")


@dataclass(frozen=True)
class SegmenterOptions:
    """How an artifacts folder is run; these defaults are every command's.

    Attributes:
        backend: auto, tensorrt, onnxruntime or openvino (`brainseg.runtime.backends`).
        precision: fp32, fp16, int8 or bf16; None for the machine's default (fp16 on a GPU, int8 on a CPU).
        device: CUDA device index.
        threads: CPU threads of ONNX Runtime or OpenVINO; None for one per physical core.
        spinning: ONNX Runtime's CPU threads spin between ops instead of sleeping; off by default
            (`brainseg.artifacts.sessions.DEFAULT_SPINNING` says why).
        tta, components: "auto" keeps the folder's post-processing; none/flip and
            none/largest/min_volume override it.
        batch_size: the most slices one graph call takes (`predict` splits a scan into such batches).
        cuda_graph: TensorRT: capture a CUDA graph for batches of `batch_size`.
        max_pixels, max_voxels: an image whose header declares more pixels, or a volume whose
            header declares more voxels (channels included), is refused before anything is
            allocated for it (`brainseg.formats`).
        brats_labels: the BraTS label convention label maps are written in, "2021" (enhancing
            tumour 4) or "2023" (3); None for the training labels' (`labels_for`).
    """

    backend: str = BackendName.AUTO.value
    precision: str | None = None
    device: int = 0
    threads: int | None = None
    spinning: bool = DEFAULT_SPINNING
    tta: str = TtaMode.AUTO.value
    components: str = ComponentRule.AUTO.value
    batch_size: int = 8
    cuda_graph: bool = False
    max_pixels: int = MAX_PIXELS
    max_voxels: int = MAX_VOXELS
    brats_labels: str | None = None

    def labels_for(self, manifest: Manifest) -> str:
        """The label convention to write: `brats_labels`, else the training labels', else 2021's."""
        return str(self.brats_labels or manifest.brats_labels or DEFAULT_CONVENTION)

    def segmenter_options(self) -> SegmenterOptions:
        """These settings alone, from a command's options that extend them (RunOptions, EvalOptions...)."""
        return SegmenterOptions(**{f.name: getattr(self, f.name) for f in fields(SegmenterOptions)})

    def check(self) -> None:
        """Raise ConfigError naming the first option out of range or not among its choices."""
        for flag, value, allowed in (("--backend", self.backend, BackendName), ("--tta", self.tta, TtaMode),
                                     ("--components", self.components, ComponentRule),
                                     ("--precision", self.precision, PrecisionName)):
            if value is not None and value not in allowed.values():
                raise ConfigError(f"{flag} must be one of {', '.join(allowed.values())}, got {value!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        for flag, value in (("--max-pixels", self.max_pixels), ("--max-voxels", self.max_voxels)):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if self.brats_labels is not None and str(self.brats_labels) not in LABEL_CONVENTIONS:
            raise ConfigError(f"--brats-labels must be one of {', '.join(LABEL_CONVENTIONS)}, "
                              f"got {self.brats_labels!r}")


@dataclass(frozen=True)
class ScanSteps:
    """The per-scan steps around the graph, which need no backend: read a scan into the graph's form,
    and bring the graph's outputs for it back to the scan's size with the folder's post-processing."""

    spec: InputSpec
    threshold: float
    post: PostProcessing
    limits: SizeLimits = SizeLimits()

    @classmethod
    def of(cls, manifest: Manifest, options: SegmenterOptions) -> ScanSteps:
        post = manifest.postprocessing.with_overrides(tta=options.tta, components=options.components)
        return cls(manifest.input, manifest.threshold, post, SizeLimits(options.max_pixels, options.max_voxels))

    def read(self, scan: Scan) -> tuple[ScanData, np.ndarray]:
        """Read `scan` (`loading.load`, within `limits`) and bring its slices to the graph's input
        size: (data, (S, h, w, C))."""
        data = loading.load(scan, self.spec, limits=self.limits)
        return data, self.to_graph_size(data.image)

    def graph_bytes(self, slices: int) -> int:
        """Bytes of `slices` slices at the graph's input size, twice over (resized one by one, then
        stacked): what `read` holds beyond reading a scan of that many slices."""
        height, width = self.spec.size
        return 2 * slices * height * width * self.spec.channels * np.dtype(self.spec.dtype).itemsize

    def to_graph_size(self, image: np.ndarray) -> np.ndarray:
        """(S, H, W, C) slices -> (S, h, w, C) at the graph's input size (contiguous)."""
        size = self.spec.size
        if image.shape[1:3] == size:
            return np.ascontiguousarray(image)
        if size[0] != size[1]:
            raise ConfigError(f"the graph's input is {size[0]}x{size[1]}; only square inputs are resized")
        return resize_slices(image, size[0], is_mask=False)

    def finish(self, arrays: dict[str, np.ndarray], size: tuple[int, int]) -> Prediction:
        """The graph's outputs for one scan, each (S, K, h, w) -> its Prediction (S, H, W, K) at `size`.

        Resized back, the mask is thresholded again; then the component rule is applied to it (in
        3-D over the scan's slices). A member graph, which has no disagreement output, gets a zero one.
        """
        arrays = {name: array.transpose(0, 2, 3, 1) for name, array in arrays.items()}  # views, no copy
        probability = arrays[PROBABILITY]
        disagreement = arrays.get(DISAGREEMENT, np.zeros_like(probability))
        height, width = size
        if probability.shape[1:3] == (height, width):
            mask = arrays[MASK].astype(np.uint8)
        else:
            probability = resize_back(np.ascontiguousarray(probability), height, width)
            disagreement = resize_back(np.ascontiguousarray(disagreement), height, width)
            mask = (probability >= self.threshold).astype(np.uint8)
        return Prediction(probability, self.post.refine_classes(mask), disagreement)

    def finish_scan(self, data: ScanData, arrays: dict[str, np.ndarray]) -> Prediction:
        """`finish` at the size of the scan `data` was read from."""
        return self.finish(arrays, data.image.shape[1:3])


class Segmenter:
    """An artifacts folder opened once to run: backend, precision, file and post-processing resolved.

    A context manager; `close()` frees the backend. See the module docstring for what it offers.
    """

    def __init__(self, artifacts: str | Path | Manifest, options: SegmenterOptions = SegmenterOptions(), *,
                 file: str | None = None, openvino_defaults: bool = False) -> None:
        """Open `artifacts` as `options` say (ConfigError/ArtifactError naming what cannot be run).

        `file`: instead of the gated choice, run this one file of the folder on the CPU as exported,
        with no post-processing, on `options.backend` (onnxruntime or openvino): a member's own graph,
        or with `openvino_defaults` the fp32 file under OpenVINO's own settings. seg-bench's
        comparison rows; never what seg-run runs.
        """
        options = options.segmenter_options()
        if file is not None:
            options = replace(options, tta="none", components="none", precision=options.precision or "fp32")
        options.check()
        self.manifest = artifacts if isinstance(artifacts, Manifest) else Manifest.load(artifacts)
        self.options = options
        self.steps = ScanSteps.of(self.manifest, options)
        self.spec, self.threshold, self.post = self.steps.spec, self.steps.threshold, self.steps.post
        if file is None:
            settings = BackendSettings(device=options.device, threads=options.threads, spinning=options.spinning,
                                       cuda_graph_batch=options.batch_size if options.cuda_graph else None)
            self.backend, self.choice = open_backend(self.manifest, options.backend, options.precision, settings)
        else:
            self.backend = open_file(self.manifest.folder / file, options.backend, options.precision,
                                     threads=options.threads, spinning=options.spinning, defaults=openvino_defaults)
            why = "OpenVINO's own settings, not gated" if openvino_defaults else "one file as exported, not gated"
            self.choice = Choice(options.backend, options.precision, file, why)
        self.precision = self.choice.precision
        self._single_file = file is not None
        self._graph = FlipTTA(self.backend, self.threshold) if self.post.tta == "flip" else self.backend
        self.batch_size = min(options.batch_size, self.backend.max_batch or options.batch_size)
        log.info("backend: %s, precision %s, %s (%s); %s; ships %s", self.choice.backend, self.choice.precision,
                 self.choice.file, self.choice.reason, self.post.describe(), self.deployed or "one file")

    # --- what it runs ---------------------------------------------------------------------------

    def describe(self) -> dict:
        """The backend's own description (provider or device, precision, file, threads...), the TTA,
        why this backend was chosen, and which candidate of the export's front the folder ships
        ("deployed"; None for a single file run outside the gated choice)."""
        return {**self._graph.describe(), "reason": self.choice.reason, "deployed": self.deployed}

    @property
    def deployed(self) -> str | None:
        """The export's shipped candidate ("resunet", "ensemble/flip"...), or None when `file` was given."""
        return None if self._single_file else self.manifest.deployed

    # --- running it -----------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """(n, h, w, C) slices at the graph's size -> its outputs by name, each (n, K, h, w), TTA included.
        n may exceed `batch_size` only where the backend takes any batch (`backend.max_batch` None)."""
        return self._graph.infer(batch)

    def infer_all(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """`infer` over any number of slices, `batch_size` at a time; outputs concatenated."""
        if len(images) <= self.batch_size:
            return self.infer(images)
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), self.batch_size):
            for name, array in self.infer(images[start:start + self.batch_size]).items():
                parts.setdefault(name, []).append(array)
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def predict(self, image: np.ndarray) -> Prediction:
        """One scan's (S, H, W, C) slices, as a reader gives them -> its Prediction at (H, W)."""
        return self.steps.finish(self.infer_all(self.steps.to_graph_size(image)), image.shape[1:3])

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_graph(path: Path, backend: str, precision: str, *, threshold: float) -> dict[str, Backend]:
    """A graph file outside any artifacts folder, opened once as a Segmenter opens its backend (seg-run's
    session settings), as each TTA mode runs it: {"none": the backend, "flip": FlipTTA around the same one}.
    The export's front times its candidates with it; closing "none" closes both."""
    opened = open_file(path, backend, precision, threads=None, spinning=DEFAULT_SPINNING)
    return {"none": opened, "flip": FlipTTA(opened, threshold)}
