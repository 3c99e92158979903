"""ONNX Runtime backend: the ensemble graph on the TensorRT, CUDA or CPU execution provider.

Session options follow the device: on the CPU one intra-op thread per physical core (or
`threads`), threads that spin between ops or sleep (see `brainseg.artifacts.sessions.ort_session`),
every graph optimisation; on CUDA, outputs are bound to device memory with I/O binding and copied
back once per batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainseg.artifacts.sessions import import_onnxruntime, numpy_dtype, ort_session
from brainseg.errors import ArtifactError

# Best first; the first one present is used.
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers() -> list[str]:
    """The execution providers of the installed ONNX Runtime that this backend can use, best first."""
    ort = import_onnxruntime()
    present = set(ort.get_available_providers())
    return [p for p in PROVIDER_ORDER if p in present]


class OnnxRuntimeBackend:
    """Run one ensemble ONNX file; `infer(batch)` returns the graph's three outputs as numpy arrays.

    Args:
        onnx_path: the ensemble graph.
        precision: fp32, fp16 or int8 (reported only; precision lives in the file).
        provider: an execution provider name, or None for the best one present.
        device: CUDA device index for the CUDA and TensorRT providers.
        threads: intra-op threads on the CPU; None for one per physical core.
        spinning: let the CPU threads spin between ops and calls; right for one session called
            back to back (seg-run's inference loop), wrong for several sessions taking turns.
        cache_dir: where the TensorRT provider keeps its engines (reused between runs).
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, precision: str, *, provider: str | None = None, device: int = 0,
                 threads: int | None = None, spinning: bool, cache_dir: Path | None = None) -> None:
        self.onnx_path = Path(onnx_path)
        self.precision = precision
        present = available_providers()
        self.provider = provider or present[0]
        if self.provider not in present:
            raise ArtifactError(f"ONNX Runtime here has no {self.provider}; present: {', '.join(present)}")
        self.device = device
        providers = [(self.provider, self._provider_options(cache_dir)), "CPUExecutionProvider"]
        if self.provider == "CPUExecutionProvider":
            providers = ["CPUExecutionProvider"]
        self.session = ort_session(self.onnx_path, threads=threads, providers=providers, spinning=spinning)
        image = self.session.get_inputs()[0]
        self.input_name = image.name
        self.input_dtype = numpy_dtype(image.type)
        self.input_shape = tuple(image.shape[1:])
        self.outputs = [node.name for node in self.session.get_outputs()]  # member graphs lack disagreement
        self.max_batch = None  # any batch size; the caller picks
        self._on_gpu = self.provider != "CPUExecutionProvider"

    def _provider_options(self, cache_dir: Path | None) -> dict:
        if self.provider == "CUDAExecutionProvider":
            return {"device_id": str(self.device)}
        if self.provider == "TensorrtExecutionProvider":
            options = {"device_id": str(self.device)}
            if cache_dir is not None:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                options |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
                            "trt_timing_cache_enable": "True"}
            return options
        return {}

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """(n, H, W, C) slices in the graph's input dtype -> the graph's outputs by name, each (n, K, H, W).

        The ensemble graph gives probability, mask and disagreement; a member graph the first two.
        """
        if batch.dtype != self.input_dtype or batch.shape[1:] != self.input_shape:
            raise ValueError(f"batch is {batch.dtype}{list(batch.shape)}; the graph takes "
                             f"{self.input_dtype}[n, {', '.join(map(str, self.input_shape))}]")
        batch = np.ascontiguousarray(batch)
        if not self._on_gpu:
            return dict(zip(self.outputs, self.session.run(self.outputs, {self.input_name: batch}), strict=True))
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, batch)
        for name in self.outputs:
            binding.bind_output(name, "cuda", self.device)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.outputs, binding.copy_outputs_to_cpu(), strict=True))

    def describe(self) -> dict:
        ort = import_onnxruntime()
        return {"backend": self.name, "provider": self.session.get_providers()[0], "precision": self.precision,
                "file": self.onnx_path.name, "onnxruntime": ort.__version__,
                "threads": self.session.get_session_options().intra_op_num_threads or "per core"}

    def close(self) -> None:
        self.session = None

    def __enter__(self) -> OnnxRuntimeBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
