"""`seg-export triton`: an NVIDIA Triton Inference Server model repository from an artifacts folder.

For each precision asked for (default: every one that passed the export's accuracy gate) the
repository gets `<name>-<precision>/config.pbtxt` and `<name>-<precision>/1/model.onnx` for
Triton's onnxruntime backend; on GPU instances the fp16 and int8 graphs run there through ONNX
Runtime's TensorRT provider. Where the artifacts hold a TensorRT engine whose provenance says it
was compiled from that very ONNX file at that precision, `<name>-<precision>-trt/1/model.plan`
serves it on Triton's tensorrt backend. An engine runs only under the TensorRT version and on
the GPU its provenance names; those belong to the serving machine, not to this one, so they are
not checked here but written into the repository's README.

Every copied file is checked against the sha256 the manifest records (an engine against its
source). The repository is assembled beside its destination and moved into place whole, so a
failure leaves no half-written repository. With `add` the models go into an existing repository
beside the models already there, one whole model folder at a time, touching none of the others
(`triton_place`). Only the artifacts are read: no torch, nothing from brainseg.train.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from brainseg.artifacts.layout import ACCURACY_REPORT, provenance_file
from brainseg.artifacts.manifest import Manifest
from brainseg.artifacts.provenance import DEFAULT_BATCH, EngineProvenance, stored_provenance
from brainseg.artifacts.variants import FILE_PRECISIONS
from brainseg.deploy.triton_config import (
    INSTANCE_KINDS,
    ONNXRUNTIME,
    ORT_TENSORRT_CACHE,
    ORT_TENSORRT_PRECISION,
    TENSORRT,
    Batching,
    TensorSpec,
    graph_tensors,
    import_model_config,
    model_config,
    ort_tensorrt_accelerator,
    ort_tensorrt_cache,
    read_signature,
    to_pbtxt,
    with_fixed_batch,
)
from brainseg.deploy.triton_place import (
    MODEL_MARKER,
    README,
    RECORD,
    add_into,
    check_destination,
    move_into_place,
    shared_names,
    staging_for,
)
from brainseg.errors import ArtifactError, ConfigError, DataError
from brainseg.fileio import sha256_file, write_atomic

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TritonOptions:
    """What `export_triton` writes; the CLI's options, one for one."""

    precisions: tuple[str, ...] | None = None  # None: every precision that passed the accuracy gate
    kind: str = "gpu"  # where instances run, "gpu" or "cpu"; also which ONNX file (int8 has one per target)
    instances: int = 1  # model instances per device
    max_batch: int = DEFAULT_BATCH[2]  # ONNX models with a symbolic batch axis; an engine's comes from its profile
    preferred_batch: tuple[int, ...] | None = None  # None: DEFAULT_BATCH's opt and max, an engine's profile opt and max
    max_queue_delay_us: int = 100  # how long the dynamic batcher waits to fill a preferred batch
    name: str = "brainseg"  # models are <name>-<precision> and <name>-<precision>-trt
    hardlink: bool = False  # hard-link model files instead of copying them (copied where linking fails)
    overwrite: bool = False  # replace a repository seg-export triton wrote (with `add`: its models of these names)
    add: bool = False  # write the models into an existing repository, beside the models already there

    def check(self) -> None:
        """Raise ConfigError saying which option is out of range and what it takes."""
        if self.kind not in INSTANCE_KINDS:
            raise ConfigError(f"--kind {self.kind!r} is not one of: {', '.join(INSTANCE_KINDS)}")
        if self.instances < 1 or self.max_batch < 1 or self.max_queue_delay_us < 0:
            raise ConfigError(f"--instances and --max-batch must be >= 1 and --max-queue-delay-us >= 0; got "
                              f"{self.instances}, {self.max_batch} and {self.max_queue_delay_us}")
        if not _MODEL_NAME.fullmatch(self.name):
            raise ConfigError(f"--name {self.name!r} is not a usable model name: letters, digits, '_', '.', '-'")
        if self.preferred_batch is not None and not all(1 <= b <= self.max_batch for b in self.preferred_batch):
            raise ConfigError(f"--preferred-batch {list(self.preferred_batch)} must lie within 1..--max-batch "
                              f"({self.max_batch})")


@dataclass(frozen=True)
class TritonModel:
    """One model written into the repository."""

    name: str
    precision: str
    runtime: str  # "onnxruntime" or "tensorrt"
    source: str  # the artifacts file it serves
    sha256: str
    max_batch: int  # 0: the graph's batch is fixed and part of `image.dims`
    image: TensorSpec  # the input as configured
    outputs: tuple[TensorSpec, ...]
    dice: float | None  # the served ONNX file's validation Dice from the export
    serves_on: str | None = None  # a plan's TensorRT version and GPU
    ort_tensorrt: bool = False  # an ONNX model that runs through ONNX Runtime's TensorRT provider


@dataclass
class TritonRepository:
    """What `export_triton` wrote, and the engines it found and did not serve (with the reason)."""

    path: Path
    models: list[TritonModel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _ServedGraph:
    """One precision's ONNX file and its tensors, read once and shared by its ONNX and plan models."""

    precision: str
    path: Path
    sha256: str
    batch: int | None  # None: symbolic
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def export_triton(artifacts: str | Path, out: str | Path, options: TritonOptions = TritonOptions()) -> TritonRepository:
    """Write a Triton model repository for `artifacts` at `out`; see the module docstring.

    Raises ArtifactError for a missing, unverifiable or inconsistent artifacts folder and
    ConfigError for options it cannot serve (a precision that failed the gate, a non-empty `out`, a
    name taken in a shared repository).
    """
    options.check()
    artifacts, out = Path(artifacts), Path(out)
    if not artifacts.is_dir():
        raise ArtifactError(f"{artifacts}: artifacts folder not found")
    manifest = Manifest.load(artifacts)
    precisions = choose_precisions(manifest, options.precisions, options.kind)
    import_model_config()  # a missing extra fails before anything is written
    check_destination(out, artifacts, options.overwrite, options.add)
    staging = staging_for(out)
    try:
        repo = TritonRepository(out)
        for precision in precisions:
            graph = _served_graph(manifest, precision, options.kind)
            repo.models.append(_write_onnx_model(manifest, graph, staging, options))
            if options.kind == "gpu":
                _write_plan_model(manifest, graph, staging, options, repo)
        readme_name, record_name = shared_names(options.name) if options.add else (README, RECORD)
        write_atomic(staging / readme_name, readme(manifest, repo))
        write_atomic(staging / record_name, _record(manifest, repo, options))
        if options.add:
            add_into(staging, out, options.overwrite)
        else:
            move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return repo


def choose_precisions(manifest: Manifest, wanted: tuple[str, ...] | None, target: str) -> list[str]:
    """The precisions to serve on `target`: `wanted`, each checked, or all that passed the accuracy gate."""
    usable = [p for p in manifest.usable_precisions(target) if p in FILE_PRECISIONS]  # ONNX Runtime's backend
    if wanted is None:
        if not usable:
            raise ConfigError(f"{manifest.folder}: no precision with a {target} file passed the accuracy gate "
                              f"(see {manifest.folder / ACCURACY_REPORT}); nothing to serve")
        return usable
    if not wanted:
        raise ConfigError(f"--precision names no precision; usable: {', '.join(usable) or 'none'}")
    for precision in wanted:
        if precision not in FILE_PRECISIONS:
            raise ConfigError(f"--precision {precision!r} is not one of: {', '.join(FILE_PRECISIONS)}")
        manifest.file_for(precision, target)  # ArtifactError: not exported, or no file for this target
        if not manifest.passed(precision):
            raise ConfigError(f"{manifest.folder}: precision {precision} failed the accuracy gate; "
                              f"usable: {', '.join(usable) or 'none'}")
    return list(dict.fromkeys(wanted))


def engine_mismatches(engine: Path, onnx_sha256: str, precision: str) -> list[str]:
    """Why `engine` was not compiled from the ONNX file with `onnx_sha256` at `precision`; empty when it was.

    Only what ties an engine to its graph is compared; its TensorRT version and GPU must match
    the serving machine, which is not this one.
    """
    record = provenance_file(engine)
    if not record.is_file():
        return [f"no provenance file {record.name} beside it"]
    try:
        stored = stored_provenance(engine)
    except DataError as exc:
        return [f"{record.name}: {exc}"]
    problems = []
    if stored.onnx_sha256 != onnx_sha256:
        problems.append(f"compiled from ONNX sha256 {stored.onnx_sha256[:12]}..., the {precision} file's is "
                        f"{onnx_sha256[:12]}...")
    if stored.precision != precision:
        problems.append(f"compiled at precision {stored.precision}, not {precision}")
    if not stored.strongly_typed:
        problems.append("compiled as a weakly typed network (brainseg serves strongly typed engines only)")
    return problems


def _served_graph(manifest: Manifest, precision: str, target: str) -> _ServedGraph:
    path = manifest.path_for(precision, target)
    signature = read_signature(path)
    inputs, outputs = graph_tensors(manifest, signature)
    return _ServedGraph(precision, path, manifest.files[path.name].sha256, signature.batch, inputs, outputs)


def _write_onnx_model(manifest: Manifest, graph: _ServedGraph, repo: Path, options: TritonOptions) -> TritonModel:
    name = f"{options.name}-{graph.precision}"
    opt = min(DEFAULT_BATCH[1], options.max_batch)
    batching = _batching(graph, name, options.max_batch, options.preferred_batch or (opt, options.max_batch), options)
    inputs, outputs = _configured_tensors(graph, batching)
    optimization = None
    if options.kind == "gpu" and graph.precision in ORT_TENSORRT_PRECISION:
        profile = None if batching.max_batch == 0 else (1, opt, batching.max_batch)
        optimization = ort_tensorrt_accelerator(graph.precision, inputs[0], profile,
                                                ort_tensorrt_cache(name, graph.sha256))
    config = model_config(name, ONNXRUNTIME, inputs=inputs, outputs=outputs, batching=batching, kind=options.kind,
                          instances=options.instances, optimization=optimization)
    _write_model(repo / name, config, graph.path, "model.onnx", graph.sha256, options.hardlink)
    return TritonModel(name, graph.precision, ONNXRUNTIME["backend"], graph.path.name, graph.sha256,
                       batching.max_batch, inputs[0], tuple(outputs), manifest.dice(graph.precision, options.kind),
                       ort_tensorrt=optimization is not None)


def _write_plan_model(manifest: Manifest, graph: _ServedGraph, repo: Path, options: TritonOptions,
                      written: TritonRepository) -> None:
    """The `-trt` model, when a provenance-matched engine exists; a note in `written` when one is refused."""
    engine = manifest.engine_path(graph.precision)
    if not engine.is_file():
        return
    problems = engine_mismatches(engine, graph.sha256, graph.precision)
    provenance = None if problems else stored_provenance(engine)
    if provenance is not None and provenance.profile[0] > 1 and graph.batch is None:
        low, opt, high = provenance.profile
        problems = [f"its profile starts at batch {low} and Triton sends batches from 1 "
                    f"(rebuild it with seg-export engine --batch 1:{opt}:{high})"]
    if problems:
        written.notes.append(f"{engine.name} not served: {'; '.join(problems)}")
        log.warning(written.notes[-1])
        return
    name = f"{options.name}-{graph.precision}-trt"
    _, opt, high = provenance.profile
    batching = _batching(graph, name, high, options.preferred_batch or (opt, high), options)
    inputs, outputs = _configured_tensors(graph, batching)
    config = model_config(name, TENSORRT, inputs=inputs, outputs=outputs, batching=batching, kind="gpu",
                          instances=options.instances)
    engine_sha256 = sha256_file(engine)
    _write_model(repo / name, config, engine, "model.plan", engine_sha256, options.hardlink)
    written.models.append(TritonModel(name, graph.precision, TENSORRT["backend"], engine.name, engine_sha256,
                                      batching.max_batch, inputs[0], tuple(outputs),
                                      manifest.dice(graph.precision, "gpu"),
                                      serves_on=_serves_on(provenance)))


def _batching(graph: _ServedGraph, model: str, max_batch: int, preferred: tuple[int, ...],
              options: TritonOptions) -> Batching:
    if graph.batch is not None:
        return Batching(0)  # a fixed batch axis: Triton backends batch only graphs whose first axis is -1
    preferred = tuple(sorted(set(preferred)))
    if preferred[-1] > max_batch:
        raise ConfigError(f"{model}: --preferred-batch {list(preferred)} exceeds its max_batch_size {max_batch}")
    return Batching(max_batch, preferred, options.max_queue_delay_us)


def _configured_tensors(graph: _ServedGraph, batching: Batching) -> tuple[list[TensorSpec], list[TensorSpec]]:
    if batching.max_batch == 0:
        return with_fixed_batch(graph.inputs, graph.batch), with_fixed_batch(graph.outputs, graph.batch)
    return graph.inputs, graph.outputs


def _serves_on(provenance: EngineProvenance) -> str:
    return (f"TensorRT {provenance.tensorrt_version} on {provenance.gpu_name} "
            f"(compute capability {provenance.compute_capability}), batch {provenance.profile[0]}-"
            f"{provenance.profile[2]}")


def _write_model(folder: Path, config: dict, source: Path, file_name: str, sha256: str, hardlink: bool) -> None:
    header = [f"written by seg-export triton from {source.resolve()}", f"sha256 {sha256}"]
    write_atomic(folder / "config.pbtxt", to_pbtxt(config, header))
    _place(source, folder / MODEL_VERSION / file_name, sha256, hardlink)
    # the marker that lets a later export replace this folder in a shared repository (Triton reads
    # only config.pbtxt and the numbered version folders of a model folder)
    marker = {"written_by": "seg-export triton", "source": source.name, "sha256": sha256}
    write_atomic(folder / MODEL_MARKER, json.dumps(marker, indent=2) + "\n")


def _place(source: Path, dest: Path, sha256: str, hardlink: bool) -> None:
    """Copy (or hard-link) `source` to `dest`, then check the copy's sha256 against the recorded one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    linked = False
    if hardlink:
        try:
            os.link(source, dest)
            linked = True
        except OSError as exc:
            log.info("copying %s: cannot hard-link it (%s)", source.name, exc.strerror)
    if not linked:
        shutil.copyfile(source, dest)
    found = sha256_file(dest)
    if found != sha256:
        raise ArtifactError(f"{dest}: the copy of {source.name} has sha256 {found[:12]}..., "
                            f"expected {sha256[:12]}...; the source changed while it was copied, or the disk is full")


def _record(manifest: Manifest, repo: TritonRepository, options: TritonOptions) -> str:
    record = {
        "written_by": "seg-export triton",
        "artifacts": str(manifest.folder.resolve()),
        "manifest_sha256": manifest.sha256,
        "options": asdict(options),
        "models": [{"name": m.name, "precision": m.precision, "runtime": m.runtime, "source": m.source,
                    "sha256": m.sha256, "max_batch_size": m.max_batch, "serves_on": m.serves_on}
                   for m in repo.models],
        "notes": repo.notes,
    }
    return json.dumps(record, indent=2) + "\n"


def readme(manifest: Manifest, repo: TritonRepository) -> str:
    """The repository's README: what each model serves, how to start Triton on it and how to measure it."""
    path, first = repo.path.resolve(), repo.models[0]
    lines = [
        "# Triton model repository (brainseg)", "",
        f"Written by `seg-export triton` from `{manifest.folder.resolve()}` (manifest sha256 "
        f"`{manifest.sha256[:16]}`).", "",
        "| model | backend | precision | serves | max_batch_size | val Dice |", "|---|---|---|---|---|---|",
        *(f"| `{m.name}` | {m.runtime} | {m.precision} | `{m.source}` | {m.max_batch} | "
          f"{'-' if m.dice is None else f'{m.dice:.4f}'} |" for m in repo.models), "",
        "val Dice: the export's mean per-patient Dice of the served ONNX file (for a plan, of the file it was "
        "compiled from) on the validation patients.", "",
        "## Start", "", "```", f"tritonserver --model-repository {path}", "```", "",
        "or in NVIDIA's container (for a `-trt` model, a release whose TensorRT is the engine's):", "",
        "```", f"docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {path}:/models \\",
        "    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository /models", "```", "",
        "## Tensors", "",
        f"- input `{first.image.name}`: {_tensor_text(first, first.image)}, raw {manifest.input.layout} slices; "
        "casting and normalisation happen inside the graph",
        *(f"- output `{t.name}`: {_tensor_text(first, t)}" for t in first.outputs), "",
        "## Measure", "",
        "`--shape` is one request item's shape: without the batch axis where max_batch_size > 0 (`-b` sets the "
        "slices per request), with it where the graph's batch is fixed.", "",
        "```", *(_perf_analyzer(m) for m in repo.models), "```", "",
    ]
    if any(m.ort_tensorrt for m in repo.models):
        lines += ["## ONNX Runtime with TensorRT", "",
                  "The fp16 and int8 ONNX models run through ONNX Runtime's TensorRT provider on GPU instances. "
                  "Their first load builds a TensorRT engine (minutes); it is kept on the server for the next "
                  f"load, in a folder of each model's own under `{ORT_TENSORRT_CACHE}` (named by the model and "
                  "its file's sha256, so no other model or export loads it).", ""]
    plans = [m for m in repo.models if m.serves_on]
    if plans:
        lines += ["## TensorRT engines", "", *(f"- `{m.name}` runs only under {m.serves_on}." for m in plans), ""]
    if repo.notes:
        lines += ["## Engines found and not served", "", *(f"- {note}" for note in repo.notes), ""]
    return "\n".join(lines)


def _tensor_text(model: TritonModel, tensor: TensorSpec) -> str:
    shape = tensor.dims if model.max_batch == 0 else ("N", *tensor.dims)
    return f"{tensor.dtype} ({', '.join(str(dim) for dim in shape)})"


def _perf_analyzer(model: TritonModel) -> str:
    shape = f"{model.image.name}:{','.join(str(dim) for dim in model.image.dims)}"
    batch = f" -b {model.max_batch}" if model.max_batch else ""
    return f"perf_analyzer -m {model.name} --shape {shape}{batch} --concurrency-range 1:4"
