"""Compile one precision's ONNX file into a TensorRT engine on the target, with its provenance record.

Precision lives in the ONNX file: the fp16 graph carries float16 weights and math, the int8 graph
explicit Q/DQ nodes. The builder only compiles, with a strongly typed network and no precision
flags, so the same code builds on TensorRT 10 (JetPack 6) and 11 (which has no such flags). Each
engine gets `<engine>.provenance.json` (`brainseg.artifacts.provenance`), which is checked
before anything deserialises the engine. `engine_predictor` runs a built engine the way seg-run
does, so the export can score it through the same accuracy gate as the ONNX files.

TensorRT and cuda-python are imported inside the functions that use them, so this module imports
on a machine without either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from brainseg.artifacts.layout import PROBABILITY, TIMING_CACHE, provenance_file
from brainseg.artifacts.provenance import (
    DEFAULT_BATCH,
    EngineProvenance,
    current_provenance,
    engine_problems,
    import_tensorrt,
)
from brainseg.artifacts.variants import VARIANTS
from brainseg.errors import ArtifactError, BrainsegError, ConfigError, DataError
from brainseg.fileio import write_atomic


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    precision: str,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    timing_cache: Path | None = None,
    workspace_gib: float = 4.0,
    aux_streams: int | None = None,
    verbose: bool = False,
) -> EngineProvenance:
    """Build `engine_path` from `onnx_path` with one (min, opt, max) batch profile; write its provenance beside it.

    `precision` names what the ONNX file already is ("fp32", "fp16", "int8"); it sets no builder
    flag. `timing_cache` is read if it exists and written back, so later builds on this GPU skip
    kernel timing. `aux_streams` caps the extra CUDA streams TensorRT may use to overlap
    independent branches (the three ensemble members); None leaves TensorRT's own choice.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    _check_request(onnx_path, precision, batch, aux_streams)
    trt = import_tensorrt()
    provenance = current_provenance(onnx_path, precision, batch)  # before the build: no GPU fails in seconds
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # The parser owns the weight buffers the network points into, so it stays alive until the build ends.
    network, parser = _parse(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    # Tactics may use at most this much scratch memory; on a Jetson it comes out of the shared RAM.
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if aux_streams is not None:
        config.max_aux_streams = aux_streams
    _add_batch_profile(builder, network, config, batch)
    if timing_cache is not None:
        _load_timing_cache(config, Path(timing_cache))
    plan = builder.build_serialized_network(network, config)
    del parser
    if plan is None:
        raise BrainsegError(f"TensorRT could not build an engine from {onnx_path}; rerun with verbose=True for its log")
    if timing_cache is not None:
        write_atomic(Path(timing_cache), memoryview(config.get_timing_cache().serialize()))
    # A stale provenance must never describe the new engine, even if we die between the two writes.
    provenance_file(engine_path).unlink(missing_ok=True)
    write_atomic(engine_path, memoryview(plan))
    write_atomic(provenance_file(engine_path), provenance.to_json().encode())
    return provenance


def ensure_engine(
    engine_path: Path,
    onnx_path: Path,
    precision: str,
    *,
    rebuild: bool = True,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
) -> Path:
    """Return `engine_path` once its provenance matches this machine and request; never deserialises.

    The provenance record is compared with `current_provenance(onnx_path, precision, batch)`. On
    any mismatch (or a missing engine or record) the engine is rebuilt when `rebuild` is True,
    reusing the timing cache beside it; otherwise an ArtifactError names both sides of each mismatch.
    """
    engine_path = Path(engine_path)
    problems = engine_problems(engine_path, current_provenance(onnx_path, precision, batch))
    if not problems:
        return engine_path
    if not rebuild:
        raise ArtifactError(
            f"{engine_path} was not built for this machine and request: {'; '.join(problems)}. "
            "Rebuild it here (seg-export engine) or allow a rebuild."
        )
    build_engine(onnx_path, engine_path, precision=precision, batch=batch,
                 timing_cache=engine_path.parent / TIMING_CACHE)
    return engine_path


@contextmanager
def engine_predictor(engine_path: Path, onnx_path: Path, precision: str, *,
                     device: int = 0) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
    """`predict(images) -> probability` through the engine, opened as seg-run opens it (provenance checked).

    This is how the export scores an engine it built: the same backend class seg-run runs, so the
    accuracy gate measures what ships. Batches must fit the engine's profile.
    """
    from brainseg.runtime.backends.tensorrt import TensorRTBackend

    with TensorRTBackend(engine_path, onnx_path, precision, device=device) as backend:
        yield lambda images: backend.infer(images)[PROBABILITY]


def remove_engine(engine_path: Path) -> None:
    """Delete an engine and its provenance record, the record first: an engine left without one is refused."""
    provenance_file(engine_path).unlink(missing_ok=True)
    Path(engine_path).unlink(missing_ok=True)


def _check_request(onnx_path: Path, precision: str, batch: tuple[int, int, int], aux_streams: int | None) -> None:
    engine_precisions = [v.precision for v in VARIANTS if v.runtime == "tensorrt"]
    if precision not in engine_precisions:
        raise ConfigError(f"precision {precision!r} is not one of: {', '.join(engine_precisions)}")
    if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ConfigError(f"batch {tuple(batch)} must be (min, opt, max) with 1 <= min <= opt <= max")
    if aux_streams is not None and aux_streams < 0:
        raise ConfigError(f"aux_streams {aux_streams} must be 0 or more (or None for TensorRT's choice)")
    if not onnx_path.is_file():
        raise DataError(f"{onnx_path}: ONNX file not found")


def _parse(trt, builder, logger, onnx_path: Path):
    # Strongly typed: every tensor keeps the type the ONNX file gives it, so the engine computes what
    # ONNX Runtime checked. TensorRT 10 needs the flag; 11 is always strongly typed and ignores it.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so external weight files resolve next to the model.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        lines = [f"node {e.node()} '{e.node_name()}' ({e.node_operator()}): {e.desc()}" for e in errors]
        raise BrainsegError(f"TensorRT's ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(lines))
    return network, parser


def _add_batch_profile(builder, network, config, batch: tuple[int, int, int]) -> None:
    # One profile over the batch axis of every input: the export leaves only that axis dynamic.
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(tensor.shape)
        fixed_batch_fits = bool(shape) and set(batch) == {shape[0]}
        if not shape or any(d < 1 for d in shape[1:]) or not (shape[0] == -1 or fixed_batch_fits):
            raise ConfigError(
                f"input {tensor.name!r} has shape {shape}, which batch {tuple(batch)} cannot profile; expected "
                "a dynamic batch axis first and static other axes (export with a dynamic batch)"
            )
        rest = shape[1:]
        profile.set_shape(tensor.name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
    config.add_optimization_profile(profile)


def _load_timing_cache(config, path: Path) -> None:
    # The cache holds kernel timings measured on one GPU with one TensorRT version; with
    # ignore_mismatch=False TensorRT refuses a foreign one, and we start a fresh cache instead.
    blob = path.read_bytes() if path.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
