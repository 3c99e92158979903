"""manifest.json's sections as typed dataclasses: seg-export writes them, every other command reads them.

The same classes write and read the file (`brainseg.artifacts.schema.Section`), so a field's name
and type are stated once. `ManifestData` is the whole document; `brainseg.artifacts.manifest.Manifest`
is how the rest of brainseg asks it questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from brainseg.artifacts.layout import PROBABILITY
from brainseg.artifacts.schema import Section
from brainseg.artifacts.variants import OPENVINO_ONLY, PRECISIONS, TARGETS

FORMAT = "brainseg-artifacts/2"
INPUT_DTYPES = ("uint8", "float32")


def format_problem(found: object) -> str | None:
    """Why a manifest of format `found` cannot be read here; None when it is this version's."""
    if found == FORMAT:
        return None
    return f"format is {found!r}, expected {FORMAT!r} (written by another brainseg version: export the run again)"


@dataclass(frozen=True)
class InputSpec(Section):
    """What the graph takes: (N, height, width, channels) slices of `dtype`, named `name`.

    `normalisation` is applied inside the graph; `modalities` (float32 inputs from NIfTI) names
    the MRI sequences stacked as channels, in order, lower case; None for 8-bit inputs.
    """

    name: str
    dtype: str
    layout: str
    channels: int
    height: int
    width: int
    normalisation: dict[str, Any]
    modalities: tuple[str, ...] | None = None
    resize: str = ""

    def __post_init__(self) -> None:
        if self.modalities is not None:
            object.__setattr__(self, "modalities", tuple(m.lower() for m in self.modalities) or None)

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def problems(self) -> list[str]:
        return [] if self.dtype in INPUT_DTYPES else [f"input dtype {self.dtype!r} is not one of {INPUT_DTYPES}"]


@dataclass(frozen=True)
class OutputSpec(Section):
    dtype: str = ""
    layout: str = ""
    classes: int | None = None  # the probability output's target classes
    values: list[int] | None = None
    meaning: str | None = None


@dataclass(frozen=True)
class Ensemble(Section):
    members: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    weights_source: str = ""


@dataclass(frozen=True)
class FileEntry(Section):
    """One file of the folder: its hash and size, and what it is."""

    sha256: str
    bytes: int
    kind: str = ""  # "ensemble" or "member"
    precision: str | None = None
    model: str | None = None  # a member's model name
    target: str | None = None  # an int8 file's target


@dataclass(frozen=True)
class TargetUse(Section):
    """The file a precision runs on one target, its accuracy row, and OpenVINO's row of it where scored."""

    file: str
    row: str
    openvino_row: str | None = None


@dataclass(frozen=True)
class PrecisionEntry(Section):
    passed: bool
    targets: dict[str, TargetUse]
    compute: str | None = None  # bf16: the compute type OpenVINO runs the fp32 file in

    def problems(self) -> list[str]:
        if not self.targets:
            return ["lists no target files"]
        return [f"unknown target {t!r}" for t in self.targets if t not in TARGETS]


@dataclass(frozen=True)
class Accuracy(Section):
    """The gate's tables: rows by name (the variant table's rows and the PyTorch reference)."""

    table: dict[str, dict[str, Any]]
    test_table: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: str = "pytorch-fp32"
    max_dice_drop: float | None = None
    fp32_parity_max_abs: dict[str, float] = field(default_factory=dict)
    patients: int | None = None
    test_patients: int | None = None
    scored_as_deployed: str | None = None


@dataclass(frozen=True)
class ReaderSettings(Section):
    """How the training run read its data, so seg-eval reads labelled data the same way without the run."""

    layout: str
    modalities: list[str]
    target: str
    patient_regex: str | None = None
    # the built-in sample the run trained on ("sample", "sample-brats"): its size and seed
    sample_patients: int | None = None
    sample_slices: int | None = None
    seed: int | None = None
    # the BraTS label convention of the training labels ("2021": enhancing tumour 4, "2023": 3); the
    # one seg-run writes label maps in by default. None: not BraTS, not shown, or an older export
    brats_labels: str | None = None


@dataclass(frozen=True)
class SourceRun(Section):
    """The seg-train run the folder was exported from, its split and how it read its data."""

    path: str = ""
    data: str = ""
    val_patients: list[str] = field(default_factory=list)
    test_patients: list[str] = field(default_factory=list)
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    reader: ReaderSettings | None = None  # None in folders exported before it was recorded


@dataclass(frozen=True)
class BuiltEngine(Section):
    row: str
    passed: bool
    file: str | None = None  # None: it failed the gate and was removed
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Engines(Section):
    """Which TensorRT engines the export built beside the files, and the one line that says why."""

    asked: str
    reason: str
    built: dict[str, BuiltEngine] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment(Section):
    """Which candidate of the Dice-latency front the folder ships, and why (brainseg.export.front)."""

    candidate: str  # its name in `front`, e.g. "resunet", "unet+resunet/flip", "ensemble", "student"
    networks: list[str]  # the run's networks in its graph (members, or "student")
    asked: str  # --deploy: auto, ensemble or a candidate's name
    dice_tolerance: float
    rule: str
    reason: str
    timed: str = ""  # how the front was timed; "" when it was not (a forced --deploy)
    eager_ensemble_ms: float | None = None  # PyTorch eager FP32 of the three-model ensemble, same rounds
    front: list[dict[str, Any]] = field(default_factory=list)  # brainseg.export.front.Candidate.to_row
    robustness: dict[str, Any] = field(default_factory=dict)  # validation Dice under intensity shifts


@dataclass(frozen=True)
class TensorRTCheck(Section):
    """What TensorRT's parser would refuse in one file: ops outside its list, Q/DQ placements."""

    unsupported_ops: dict[str, int] = field(default_factory=dict)  # op type -> how often it occurs
    qdq_problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ManifestData(Section):
    """The whole manifest.json."""

    format: str
    input: InputSpec
    outputs: dict[str, OutputSpec]
    threshold: float
    ensemble: Ensemble
    files: dict[str, FileEntry]
    precisions: dict[str, PrecisionEntry]
    accuracy: Accuracy
    versions: dict[str, str]
    source_run: SourceRun
    created: str = ""
    postprocessing: dict[str, Any] = field(default_factory=dict)  # brainseg.export.postprocess_choice's record
    graph_notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensorrt: dict[str, TensorRTCheck] = field(default_factory=dict)
    engines: Engines | None = None
    deployment: Deployment | None = None  # None in folders exported before the front

    def problems(self) -> list[str]:
        wrong_format = format_problem(self.format)
        if wrong_format is not None:
            return [wrong_format]
        problems = []
        if PROBABILITY not in self.outputs or self.outputs[PROBABILITY].classes is None:
            problems.append(f"outputs.{PROBABILITY} names no classes")
        for precision, entry in self.precisions.items():
            if precision not in PRECISIONS:
                problems.append(f"unknown precision {precision!r}")
                continue
            for target, use in entry.targets.items():
                if precision in OPENVINO_ONLY and target != "cpu":
                    problems.append(f"precision {precision} is computed by OpenVINO on the cpu only, not the {target}")
                elif use.file not in self.files:
                    problems.append(f"precision {precision} names {use.file!r} for the {target}, which is not in "
                                    "'files'")
        return problems
