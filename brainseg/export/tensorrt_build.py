"""Compile one precision's ONNX file into a TensorRT engine on the target, and refuse engines built elsewhere.

Precision lives in the ONNX file (DESIGN 4): the fp16 graph carries float16 weights and math, the
int8 graph explicit Q/DQ nodes. The builder only compiles, with a strongly typed network and no
precision flags, so the same code builds on TensorRT 10 (JetPack 6) and 11 (which has no such
flags). Each engine gets `<engine>.provenance.json`, which `load_engine_checked` reads before
anything deserialises the engine (DESIGN 7).

TensorRT and cuda-python are imported inside the functions that use them, so this module imports
on a machine without either.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from brainseg.errors import ArtifactError, BrainsegError, ConfigError, DataError, missing_extra
from brainseg.fileio import sha256_file, write_atomic

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH = (1, 8, 32)
TIMING_CACHE_NAME = "tensorrt.timing-cache"
_MATCHED = ("onnx_sha256", "precision", "tensorrt_version", "gpu_name", "compute_capability", "strongly_typed")


@dataclass(frozen=True)
class EngineProvenance:
    """What an engine was built from and for; `stored.mismatches(current)` says why it cannot run here."""

    onnx_sha256: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "8.7" for Jetson Orin
    profile: tuple[int, int, int]  # (min, opt, max) batch of the optimisation profile
    strongly_typed: bool
    built_at: str  # ISO 8601, UTC

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineProvenance:
        """Parse `to_json` output; raises DataError when a field is missing or malformed."""
        try:
            data = json.loads(text)
            missing = [f.name for f in fields(cls) if f.name not in data]
            if missing:
                raise DataError(f"engine provenance lacks {', '.join(missing)}")
            profile = tuple(int(b) for b in data["profile"])
            if len(profile) != 3:
                raise DataError(f"engine provenance profile {data['profile']} is not (min, opt, max)")
        except (ValueError, TypeError) as exc:
            raise DataError(f"engine provenance is not valid: {exc}") from exc
        return cls(**{**{f.name: data[f.name] for f in fields(cls)}, "profile": profile})

    def mismatches(self, current: EngineProvenance) -> list[str]:
        """Each reason this (stored) engine cannot serve `current`, naming both sides.

        `built_at` never counts. The profile counts only when the requested batch range
        (`current.profile` min..max) is not inside the engine's: another opt batch changes which
        batch runs fastest, not which batches run, so it is no reason to rebuild.
        """
        found = [
            f"{name}: engine {getattr(self, name)}, this machine {getattr(current, name)}"
            for name in _MATCHED
            if getattr(self, name) != getattr(current, name)
        ]
        (low, _, high), (want_low, _, want_high) = self.profile, current.profile
        if want_low < low or want_high > high:
            found.append(f"profile: engine serves batch {low}-{high}, requested {want_low}-{want_high}")
        return found


def provenance_path(engine_path: Path) -> Path:
    """Where the provenance of `engine_path` lives: `<engine>.provenance.json` beside it."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".provenance.json")


def current_provenance(onnx_path: Path, precision: str, profile: tuple[int, ...] = DEFAULT_BATCH) -> EngineProvenance:
    """The provenance an engine built now, on this machine's current CUDA device, would have."""
    trt = _import_tensorrt()
    gpu_name, compute_capability = gpu_identity()
    return EngineProvenance(
        onnx_sha256=_onnx_sha256(onnx_path),
        precision=precision,
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        profile=tuple(profile),
        strongly_typed=True,  # build_engine builds nothing else
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


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
    trt = _import_tensorrt()
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
    provenance_path(engine_path).unlink(missing_ok=True)
    write_atomic(engine_path, memoryview(plan))
    write_atomic(provenance_path(engine_path), provenance.to_json().encode())
    return provenance


def load_engine_checked(
    engine_path: Path,
    onnx_path: Path,
    precision: str,
    *,
    rebuild: bool = True,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
) -> Path:
    """Return `engine_path` once its provenance matches this machine and request; never deserialises.

    The provenance JSON is compared with `current_provenance(onnx_path, precision, batch)`. On any
    mismatch (or a missing engine or provenance) the engine is rebuilt when `rebuild` is True,
    reusing the timing cache beside it; otherwise an ArtifactError names both sides of each mismatch.
    """
    engine_path = Path(engine_path)
    current = current_provenance(onnx_path, precision, batch)
    problems = _provenance_problems(engine_path, current)
    if not problems:
        return engine_path
    if not rebuild:
        raise ArtifactError(
            f"{engine_path} was not built for this machine and request: {'; '.join(problems)}. "
            "Rebuild it here (seg-export engine) or allow a rebuild."
        )
    cache = engine_path.parent / TIMING_CACHE_NAME
    build_engine(onnx_path, engine_path, precision=precision, batch=batch, timing_cache=cache)
    return engine_path


def gpu_identity(device: int | None = None) -> tuple[str, str]:
    """(name, "major.minor" compute capability) of a CUDA device, the current one by default."""
    cudart = _import_cudart()
    if device is None:
        device = cuda_call("cudaGetDevice", cudart.cudaGetDevice())
    props = cuda_call("cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.split("\x00", 1)[0].strip(), f"{props.major}.{props.minor}"


def cuda_call(name: str, result: tuple):
    """Unpack a cuda-python result `(error, *values)`; a non-zero error raises a BrainsegError naming `name`."""
    error, *values = result
    if int(error) != 0:  # cudaSuccess and CUDA_SUCCESS are both 0
        raise BrainsegError(f"CUDA call {name} failed: {getattr(error, 'name', error)} ({int(error)})")
    return values[0] if len(values) == 1 else tuple(values)


def _onnx_sha256(path: Path) -> str:
    """The ONNX file's hash (external-data files, if any, are not included)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: ONNX file not found")
    return sha256_file(path)


def _provenance_problems(engine_path: Path, current: EngineProvenance) -> list[str]:
    record = provenance_path(engine_path)
    if not engine_path.is_file():
        return [f"no engine at {engine_path}"]
    if not record.is_file():
        return [f"no provenance file {record.name} beside the engine"]
    try:
        stored = EngineProvenance.from_json(record.read_text(encoding="utf-8"))
    except DataError as exc:
        return [f"{record.name}: {exc}"]
    return stored.mismatches(current)


def _check_request(onnx_path: Path, precision: str, batch: tuple[int, int, int], aux_streams: int | None) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
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


def _import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise BrainsegError(
            f"{missing_extra('tensorrt', 'gpu')}; TensorRT itself comes from NVIDIA "
            "(NVIDIA's wheels on a workstation, JetPack on a Jetson)"
        ) from exc
    return tensorrt


def _import_cudart():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as exc:
            raise missing_extra("cuda-python", "gpu") from exc
    return runtime
