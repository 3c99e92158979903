"""`seg-export` as a library call: a training run -> ONNX graphs per precision, checked and gated.

Each network's own graph first; then the Dice-latency front (brainseg.export.front_step) picks the
candidate to ship, and only that candidate's fused graph is written in every precision asked for,
calibrated, gated on the validation patients and scored on the test patients.

Everything is written into a hidden sibling folder and renamed into place only when complete,
so an interrupted export never leaves a folder that looks like valid artifacts.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from brainseg.artifacts.layout import (
    ACCURACY_REPORT,
    ENSEMBLE_OUTPUTS,
    INPUT_NAME,
    MEMBER_OUTPUTS,
    PROBABILITY,
    REFERENCE,
    TIMING_CACHE,
)
from brainseg.artifacts.manifest import write_manifest
from brainseg.artifacts.sections import (
    BuiltEngine,
    Engines,
    Ensemble,
    TensorRTCheck,
)
from brainseg.artifacts.sessions import ort_session, run
from brainseg.artifacts.variants import member_file, variant
from brainseg.data.volume import Volume
from brainseg.deploy import engine_choice, tensorrt_build
from brainseg.deploy.tensorrt_checks import check_qdq_for_tensorrt, unsupported_ops
from brainseg.errors import BrainsegError, ConfigError
from brainseg.export import accuracy, front, front_step, onnx_io, openvino_rows, precision, record, robustness
from brainseg.export.calibration import calibration_slices
from brainseg.export.graphs import EnsembleGraph, MemberGraph, example_input
from brainseg.export.postprocess_choice import choose_postprocessing, predictor
from brainseg.export.staging import Writer, move_into_place, staging_folder
from brainseg.export.trained_run import TrainedRun, load_run, split_volumes
from brainseg.fileio import write_atomic
from brainseg.postprocess import DEFAULT_MIN_VOXELS, PostProcessing

log = logging.getLogger("brainseg.export")

# The targets --int8-activations writes an int8 file for. Each file serves only its own target:
# TensorRT refuses uint8 activations, and ONNX Runtime's CPU kernels run symmetric int8
# activations no faster than fp32 (see brainseg.artifacts.variants).
INT8_TARGETS = {"both": ("gpu", "cpu"), "int8_symmetric": ("gpu",), "uint8": ("cpu",)}


@dataclass(frozen=True)
class ExportOptions:
    fp16: bool = False
    int8: bool = False
    bf16: bool = False  # the fp32 file computed in bf16 by OpenVINO; only on a CPU with it (openvino_rows)
    max_dice_drop: float = 0.005
    calib_slices: int = 256
    calib_method: str = "minmax"
    int8_activations: str = "both"  # both | int8_symmetric | uint8; see INT8_TARGETS
    tta: str = "auto"  # auto | none | flip: see brainseg.postprocess
    components: str = "auto"  # auto | none | largest | min_volume
    min_voxels: int = DEFAULT_MIN_VOXELS
    weights: str = "auto"  # auto | equal | "a,b,c"
    engine: str = "auto"  # auto | yes | no: TensorRT engines here too, see brainseg.deploy.engine_choice
    simplify: bool = True
    overwrite: bool = False
    deploy: str = "auto"  # auto (the front's rule) | ensemble | a candidate's name: see brainseg.export.front
    dice_tolerance: float = front.DEFAULT_TOLERANCE
    max_shift_drop: float | None = None  # gate on the worst validation Dice drop under intensity shifts; None: off
    front_rounds: int = 5
    front_seconds: float = 1.0  # timed calls per candidate, over all rounds

    def __post_init__(self) -> None:
        if self.int8_activations not in INT8_TARGETS:
            raise ConfigError(f"--int8-activations must be one of {', '.join(INT8_TARGETS)}; "
                              f"got {self.int8_activations!r}")
        engine_choice.check_choice(self.engine)
        if self.dice_tolerance < 0:
            raise ConfigError(f"--dice-tolerance must be >= 0, got {self.dice_tolerance}")
        if self.max_shift_drop is not None and self.max_shift_drop < 0:
            raise ConfigError(f"--max-shift-drop must be >= 0, got {self.max_shift_drop}")
        if self.front_rounds < 1 or self.front_seconds <= 0:
            raise ConfigError("the front needs at least one round and a positive time per candidate")

    @property
    def cpu_int8(self) -> bool:
        """Whether the export writes the CPU's int8 file, which seg-run runs on a CPU by default."""
        return self.int8 and "cpu" in INT8_TARGETS[self.int8_activations]

    @property
    def gpu_precisions(self) -> tuple[str, ...]:
        """The precisions asked for that get a GPU file, hence an engine: fp16, and int8 unless it is CPU-only."""
        int8_gpu = self.int8 and "gpu" in INT8_TARGETS[self.int8_activations]
        return tuple(name for name, asked in (("fp16", self.fp16), ("int8", int8_gpu)) if asked)


@dataclass
class ExportResult:
    out: Path
    table: dict[str, dict]  # validation rows, gated
    failed: list[str] = field(default_factory=list)
    test_table: dict[str, dict] = field(default_factory=dict)
    postprocessing: str = ""
    engines: str = ""  # one line: which TensorRT engines were built and scored, or why none
    deployed: str = "ensemble"  # the front's candidate this folder ships
    deployed_reason: str = ""


def _torch_predict(graph: torch.nn.Module) -> accuracy.Predict:
    @torch.no_grad()
    def predict(images: np.ndarray) -> np.ndarray:
        return graph.eval()(torch.from_numpy(images))[0].float().numpy()

    return predict


def _onnx_predict(path: Path) -> accuracy.Predict:
    session = ort_session(path)
    return lambda images: run(session, {INPUT_NAME: images})[PROBABILITY]


def _check_weights(run: TrainedRun, spec: str) -> None:
    """--weights: auto, equal, or one number per member (the "ensemble" candidate's; a subset takes its share)."""
    if spec in ("auto", "equal"):
        return
    count = len(run.members)
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise ConfigError(f"--weights must be auto, equal or {count} numbers like 1,1,2; got {spec!r}") from None
    if len(weights) != count:
        names = ", ".join(m.name for m in run.members)
        raise ConfigError(f"--weights gives {len(weights)} numbers for {count} models ({names})")
    if min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError(f"--weights must be >= 0 with a positive sum, got {spec!r}")


def _weights_source(spec: str, candidate: front.Candidate) -> str:
    if len(candidate.networks) == 1:
        return "one network"
    return {"auto": "auto (fitted on the validation patients)", "equal": "equal"}.get(spec, "given")


def _calibration(run: TrainedRun, volumes: list[Volume], options: ExportOptions) -> Iterator[dict]:
    slices = calibration_slices(volumes, img_size=run.img_size, count=options.calib_slices, seed=run.config.seed)
    for start in range(0, len(slices), 8):
        yield {INPUT_NAME: slices[start : start + 8]}


def _export_networks(run: TrainedRun, writer: Writer, sets: tuple[list[Volume], list[Volume]],
                     options: ExportOptions) -> tuple[dict[str, front.Probabilities], dict]:
    """Each network's own fp32 graph (the members and the student); returns the front's probabilities of
    each file on the val and test patients, plain and mirrored, and each file's parity with PyTorch."""
    example = example_input(batch=2, size=run.img_size, channels=run.in_channels, input_dtype=run.input_dtype)
    probs: dict[str, front.Probabilities] = {"val": {}, "test": {}}
    parity = {}
    for name, model in run.networks.items():
        graph = MemberGraph(model, norm=run.norm, input_dtype=run.input_dtype, threshold=run.threshold)
        path = writer.add(member_file(name), kind="member", model=name, precision="fp32")
        onnx_io.export_onnx(graph, path, example=example, input_names=[INPUT_NAME], output_names=list(MEMBER_OUTPUTS))
        if options.simplify:
            writer.notes[path.name] = onnx_io.simplify(path)
        onnx_predict = _onnx_predict(path)
        for split, volumes in zip(("val", "test"), sets, strict=True):
            probs[split][name] = front_step.network_probabilities(onnx_predict, volumes, img_size=run.img_size,
                                                                  flip=options.tta != "none")
        torch_probs = accuracy.predict_volumes(_torch_predict(graph), sets[0], img_size=run.img_size)
        parity[name] = accuracy.max_abs_difference(torch_probs, probs["val"][name]["none"])
    return probs, parity


@dataclass
class _Scorer:
    """Scores each format as it deploys (the chosen TTA and component rule) on the val and test patients."""

    run: TrainedRun
    val: list[Volume]
    test: list[Volume]
    post: PostProcessing
    val_table: dict[str, dict] = field(default_factory=dict)
    test_table: dict[str, dict] = field(default_factory=dict)

    def score(self, name: str, predict: accuracy.Predict) -> list[np.ndarray]:
        """Fill both tables' row `name`; returns the validation probabilities."""
        predict = predictor(predict, self.post)
        if self.test:
            self._row(self.test_table, name, predict, self.test)
        return self._row(self.val_table, name, predict, self.val)

    def _row(self, table: dict, name: str, predict: accuracy.Predict, volumes: list[Volume]) -> list[np.ndarray]:
        probs = accuracy.predict_volumes(predict, volumes, img_size=self.run.img_size)
        refine = self.post.refine if self.post.components != "none" else None
        table[name] = accuracy.accuracy_row(volumes, probs, threshold=self.run.threshold, refine=refine)
        return probs


def _export_ensemble(run, writer, sets: tuple[list[Volume], list[Volume]], deployed: front.Candidate,
                     options: ExportOptions, parity: dict) -> tuple[_Scorer, dict]:
    """The deployed candidate's fused graph in each asked precision, scored against its PyTorch FP32 on the
    val and test patients.

    The post-processing is chosen on the validation patients with the fp32 file first (`options.tta` and
    `options.components`, which the front fixes to the candidate's), so every row, the reference included,
    is scored as it deploys. Returns (the scorer and its tables, the manifest's "postprocessing" section).
    """
    volumes, test = sets
    graph = EnsembleGraph([run.networks[name] for name in deployed.networks], weights=deployed.weights,
                          norm=run.norm, input_dtype=run.input_dtype, threshold=run.threshold)
    example = example_input(batch=2, size=run.img_size, channels=run.in_channels, input_dtype=run.input_dtype)
    names = dict(input_names=[INPUT_NAME], output_names=list(ENSEMBLE_OUTPUTS))
    fp32 = writer.add(variant("fp32", "gpu").onnx_file, kind="ensemble", precision="fp32")
    onnx_io.export_onnx(graph, fp32, example=example, **names)
    if options.simplify:
        writer.notes[fp32.name] = onnx_io.simplify(fp32)
    post, section = choose_postprocessing(_onnx_predict(fp32), volumes, img_size=run.img_size,
                                          threshold=run.threshold, tta=options.tta, components=options.components,
                                          min_voxels=options.min_voxels)
    scorer = _Scorer(run, volumes, test, post)
    reference = scorer.score(REFERENCE, _torch_predict(graph))
    parity["ensemble"] = accuracy.max_abs_difference(reference, scorer.score("fp32", _onnx_predict(fp32)))
    if options.fp16:
        fp16 = writer.add(variant("fp16", "gpu").onnx_file, kind="ensemble", precision="fp16")
        writer.notes[fp16.name] = precision.export_fp16(graph, fp16, example=example, **names)
        scorer.score("fp16", _onnx_predict(fp16))
    if options.int8:
        for target in INT8_TARGETS[options.int8_activations]:
            int8_variant = variant("int8", target)
            int8 = writer.add(int8_variant.onnx_file, kind="ensemble", precision="int8", target=target)
            writer.notes[int8.name] = precision.quantize_int8(
                fp32, int8, calibration=_calibration(run, volumes, options), method=options.calib_method,
                activation_type=int8_variant.int8_activations,
            )
            scorer.score(int8_variant.row, _onnx_predict(int8))
    openvino_rows.score(scorer, writer.folder, bf16=options.bf16)  # what seg-run's OpenVINO would run, gated too
    accuracy.apply_gate(scorer.val_table, reference=REFERENCE, max_drop=options.max_dice_drop)
    accuracy.add_drops(scorer.test_table, reference=REFERENCE)
    return scorer, section


def _tensorrt_checks(writer: Writer) -> dict[str, TensorRTCheck]:
    """Ops outside TensorRT's parser list and Q/DQ placements TensorRT would reject, per file."""
    checks = {}
    for name in writer.files:
        path = writer.folder / name
        checks[name] = TensorRTCheck(unsupported_ops=unsupported_ops(path), qdq_problems=check_qdq_for_tensorrt(path)
                                     if writer.files[name].get("target") == "gpu" else [])
    return checks


def _export_engines(folder: Path, scorer: _Scorer, choice: engine_choice.EngineChoice,
                    options: ExportOptions) -> Engines:
    """Build each chosen engine and score it like the ONNX files, through the same gate; a failed one is
    removed, so seg-run (which runs any engine it finds) never picks it. Returns the manifest's "engines"."""
    built = {}
    for name in choice.build:
        engine_variant = variant(name, "gpu", "tensorrt")
        onnx_path, engine = folder / engine_variant.onnx_file, folder / engine_variant.engine_file
        try:
            record = tensorrt_build.build_engine(onnx_path, engine, precision=name, timing_cache=folder / TIMING_CACHE)
        except BrainsegError as err:
            raise BrainsegError(f"building the {name} engine: {err} (--engine no exports without engines)") from err
        with tensorrt_build.engine_predictor(engine, onnx_path, name) as predict:
            scorer.score(engine_variant.row, predict)
        built[name] = (engine, engine_variant.row, asdict(record))
    accuracy.apply_gate(scorer.val_table, reference=REFERENCE, max_drop=options.max_dice_drop)
    accuracy.add_drops(scorer.test_table, reference=REFERENCE)
    entries = {}
    for name, (engine, row, provenance) in built.items():
        passed = bool(scorer.val_table[row]["passed"])
        if not passed:
            tensorrt_build.remove_engine(engine)
        entries[name] = BuiltEngine(row=row, passed=passed, file=engine.name if passed else None, provenance=provenance)
    reason = engine_choice.with_outcome(choice, {name: entry.passed for name, entry in entries.items()})
    return Engines(asked=options.engine, reason=reason, built=entries)


def export_run(run_dir: str | Path, out: str | Path, options: ExportOptions = ExportOptions(),
               *, progress: Callable[[str], None] = log.info) -> ExportResult:
    """Export a seg-train run into an artifacts folder; see the module docstring.

    Precisions whose validation Dice drops more than `options.max_dice_drop` against PyTorch FP32
    are marked failed in the manifest and listed in the result (the CLI turns that into exit 1).
    Every format is also scored on the run's test patients, which choose nothing. TensorRT engines
    are built, scored and gated too where `options.engine` and the machine allow (engine_choice).
    """
    out = Path(out)
    host = None if options.engine == "no" else engine_choice.probe_host()
    # an --engine yes that cannot be met stops here, before any work
    engine_choice.check_request(options.engine, host, options.gpu_precisions, artifacts=str(out))
    openvino_rows.check_request(options.bf16)
    run = load_run(run_dir)
    _check_weights(run, options.weights)
    progress(f"reading the {len(run.split.val)} validation and {len(run.split.test)} test patients")
    sets = split_volumes(run, "val"), split_volumes(run, "test")
    staging = staging_folder(out, options.overwrite)
    try:
        writer = Writer(staging)
        progress("exporting each network's graph and checking it against PyTorch")
        probs, parity = _export_networks(run, writer, sets, options)
        weighed = _weigh_front(run, sets, probs, options, progress)
        deployed = weighed.chosen
        progress(f"exporting the shipped candidate ({deployed.name}) in the precisions asked for")
        scorer, post_section = _export_ensemble(run, writer, sets, deployed, _deployed_options(options, deployed),
                                                parity)
        if options.deploy == front.ENSEMBLE:
            front_step.with_tta(weighed, scorer.post.tta)
        else:
            post_section["decided_on"] = (f"the Dice-latency front ({ACCURACY_REPORT}): {deployed.name}'s TTA and "
                                          "component rule, chosen on the validation patients")
        weighed.robustness = _shift_check(run, staging, sets[0], scorer, options)
        _shift_gate(scorer.val_table, weighed.robustness, options.max_shift_drop)
        gated = record.gated_precisions(scorer.val_table, INT8_TARGETS[options.int8_activations])
        choice = engine_choice.choose_engines(options.engine, host, options.gpu_precisions,
                                              [name for name, entry in gated.items() if entry.passed],
                                              artifacts=str(out))
        if choice.build:
            progress(f"building TensorRT engines for {', '.join(choice.build)} and scoring them")
        engines = _export_engines(staging, scorer, choice, options)
        _shift_gate(scorer.val_table, weighed.robustness, options.max_shift_drop)  # the engines' gate re-marked all
        table = scorer.val_table
        ensemble = Ensemble(members=list(deployed.networks), weights=list(deployed.weights),
                            weights_source=_weights_source(options.weights, deployed))
        manifest = record.build_manifest(
            run, files=writer.finalise(), notes=writer.notes, tensorrt=_tensorrt_checks(writer),
            tables=(scorer.val_table, scorer.test_table), post_section=post_section, parity=parity,
            ensemble=ensemble, max_dice_drop=options.max_dice_drop, int8_targets=INT8_TARGETS[options.int8_activations],
            engines=engines, deployment=weighed.section(asked=options.deploy, tolerance=options.dice_tolerance))
        write_atomic(staging / ACCURACY_REPORT,
                     accuracy.table_markdown(table, max_drop=options.max_dice_drop, parity=parity,
                                             test_table=scorer.test_table, postprocessing=post_section)
                     + "\n" + weighed.markdown(options.dice_tolerance))
        front_step.plot(staging, weighed, options.dice_tolerance)
        write_manifest(staging, manifest)
        move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    failed = [name for name, row in table.items() if not row["passed"]]
    return ExportResult(out=out, table=table, failed=failed, test_table=scorer.test_table,
                        postprocessing=post_section["description"], engines=engines.reason,
                        deployed=weighed.chosen.name, deployed_reason=weighed.decision.reason)


def _weigh_front(run: TrainedRun, sets, probs, options: ExportOptions, progress) -> front_step.FrontOutcome:
    settings = front.FrontSettings(threshold=run.threshold, tta=options.tta, components=options.components,
                                   min_voxels=options.min_voxels, weights=options.weights)
    ask = front_step.FrontAsk(deploy=options.deploy, tolerance=options.dice_tolerance, cpu_int8=options.cpu_int8,
                              rounds=options.front_rounds, seconds=options.front_seconds, simplify=options.simplify)
    return front_step.weigh(run, sets, probs, settings, ask, progress=progress)


def _deployed_options(options: ExportOptions, deployed: front.Candidate) -> ExportOptions:
    """The options the shipped graph is exported with: the front's TTA and component rule for its candidate;
    `--deploy ensemble` keeps the export's own choice of both, as before the front."""
    if options.deploy == front.ENSEMBLE:
        return options
    return replace(options, tta=deployed.tta, components=deployed.components)


def _shift_check(run: TrainedRun, folder: Path, volumes: list[Volume], scorer: _Scorer,
                 options: ExportOptions) -> dict:
    """The shipped fp32 file's validation Dice under the intensity shifts (brainseg.export.robustness)."""
    predict = predictor(_onnx_predict(folder / variant("fp32", "gpu").onnx_file), scorer.post)
    return robustness.shift_report(predict, volumes, img_size=run.img_size, threshold=run.threshold,
                                   post=scorer.post, max_drop=options.max_shift_drop)


def _shift_gate(table: dict[str, dict], report: dict, max_drop: float | None) -> None:
    """With --max-shift-drop, a worse drop under an intensity shift fails every row: the model itself failed."""
    if report.get("passed") is False:
        for row in table.values():
            row["passed"] = False
            row["failed_because"] = (f"intensity shift {report['worst']} drops validation Dice by "
                                     f"{report['worst_drop']:.4f} > --max-shift-drop {max_drop}")
