"""manifest.json, read through one typed object: what an artifacts folder holds and how to feed it.

`seg-export` writes the manifest as a `ManifestData` (`write_manifest`); everything else reads it
as a `Manifest`, whose properties and methods are the only way the rest of brainseg looks into it,
so a renamed key breaks in one place. Both are the typed sections of `brainseg.artifacts.sections`.
Every file is listed with its sha256, and a folder whose files no longer match is refused when it
is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from brainseg.artifacts.layout import MANIFEST, PROBABILITY
from brainseg.artifacts.schema import SchemaError
from brainseg.artifacts.sections import (
    FORMAT,
    Deployment,
    Engines,
    FileEntry,
    InputSpec,
    ManifestData,
    ReaderSettings,
    SourceRun,
    TensorRTCheck,
    format_problem,
)
from brainseg.artifacts.variants import PRECISIONS, TARGETS, engine_file
from brainseg.errors import ArtifactError
from brainseg.fileio import sha256_file, write_atomic
from brainseg.postprocess import PostProcessing

__all__ = ["FORMAT", "InputSpec", "Manifest", "ManifestData", "file_entry", "write_manifest"]


class Manifest:
    """An artifacts folder's manifest, validated (and by default its files' hashes checked) on load.

    Use `Manifest.load(folder)`; the constructor takes already read `ManifestData`.
    """

    def __init__(self, folder: Path, data: ManifestData) -> None:
        self.folder = Path(folder)
        self.data = data
        self.input = data.input

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = True) -> Manifest:
        """Read and check `folder/manifest.json`; raise ArtifactError naming what is wrong."""
        folder = Path(folder)
        path = folder / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{folder}: no {MANIFEST}; is this a seg-export artifacts folder?") from None
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{path}: unreadable ({err})") from err
        wrong_format = format_problem(raw.get("format", FORMAT)) if isinstance(raw, dict) else None
        if wrong_format is not None:  # before its keys: another version's may differ
            raise ArtifactError(f"{path}: {wrong_format}")
        try:
            data = ManifestData.from_dict(raw)
        except SchemaError as err:
            raise ArtifactError(f"{path}: {err}") from None
        problems = verify_files(folder, data) if verify else []
        if problems:
            raise ArtifactError(f"{path}: " + "; ".join(problems))
        return cls(folder, data)

    # --- what goes in and comes out -------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    @property
    def sha256(self) -> str:
        """The manifest file's own hash: names these exact artifacts in run summaries and reports."""
        return sha256_file(self.path)

    @property
    def threshold(self) -> float:
        return self.data.threshold

    @property
    def classes(self) -> int:
        return int(self.data.outputs[PROBABILITY].classes)

    @property
    def ensemble(self) -> dict:
        """{"members": [names], "weights": [floats], "weights_source": str}."""
        return self.data.ensemble.to_dict()

    @property
    def postprocessing(self) -> PostProcessing:
        """The TTA and component rule this folder runs with by default (none for folders older than the choice)."""
        return PostProcessing.from_dict(self.data.postprocessing.get("chosen"))

    @property
    def postprocessing_choice(self) -> dict:
        """How the default was chosen: {"chosen", "decided_on", "tta": {mode: val Dice}, "components": {...}}."""
        return dict(self.data.postprocessing)

    @property
    def source_run(self) -> Path:
        """The seg-train run folder the artifacts were exported from (possibly not on this machine)."""
        return Path(self.data.source_run.path)

    @property
    def source(self) -> SourceRun:
        """The source run as the export recorded it: its data, split (patient ids) and reader settings."""
        return self.data.source_run

    @property
    def reader(self) -> ReaderSettings | None:
        """How the source run read its data (None for folders exported before it was recorded)."""
        return self.data.source_run.reader

    @property
    def brats_labels(self) -> str | None:
        """The BraTS label convention ("2021" or "2023") of the training labels, None where not recorded."""
        return self.reader.brats_labels if self.reader is not None else None

    def split_ids(self, split: str) -> list[str]:
        """The source run's "val" or "test" patient ids, as the export recorded them."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be val or test, got {split!r}")
        return list(self.data.source_run.val_patients if split == "val" else self.data.source_run.test_patients)

    # --- files ----------------------------------------------------------------------------------

    @property
    def exported_precisions(self) -> list[str]:
        """Every precision that was exported, in PRECISIONS order, passed or not."""
        return [p for p in PRECISIONS if p in self.data.precisions]

    def usable_precisions(self, target: str | None = None) -> list[str]:
        """The precisions that passed the accuracy gate (and have a file for `target`, when given)."""
        return [p for p in self.exported_precisions if self.passed(p) and (target is None or self.has_file(p, target))]

    def passed(self, precision: str) -> bool:
        entry = self.data.precisions.get(precision)
        return entry is not None and entry.passed

    def has_file(self, precision: str, target: str) -> bool:
        entry = self.data.precisions.get(precision)
        return entry is not None and target in entry.targets

    def file_for(self, precision: str, target: str) -> str:
        """The ONNX file of `precision` made for `target` ("gpu" or "cpu"); ArtifactError if there is none."""
        _check_target(target)
        entry = self.data.precisions.get(precision)
        if entry is None:
            raise ArtifactError(f"{self.folder}: precision {precision} was not exported; "
                                f"this folder has {', '.join(self.exported_precisions)}")
        if target not in entry.targets:
            made_for = ", ".join(entry.targets)
            raise ArtifactError(f"{self.folder}: {precision} has no file for the {target} (only for the {made_for}); "
                                "export it with --int8-activations both")
        return entry.targets[target].file

    def path_for(self, precision: str, target: str) -> Path:
        return self.folder / self.file_for(precision, target)

    def engine_path(self, precision: str) -> Path:
        """Where the TensorRT engine of `precision` lives (compiled from its GPU file)."""
        return self.folder / engine_file(self.file_for(precision, "gpu"))

    @property
    def files(self) -> dict[str, FileEntry]:
        """Every file by name with its facts: sha256, bytes, kind ("member" or "ensemble"), precision..."""
        return dict(self.data.files)

    @property
    def graph_notes(self) -> dict[str, dict]:
        """What the export noted per file: simplification counts, int8 activation type and calibration."""
        return {name: dict(note) for name, note in self.data.graph_notes.items()}

    @property
    def tensorrt_checks(self) -> dict[str, TensorRTCheck]:
        """Per file, what TensorRT's parser would refuse (unsupported ops, Q/DQ placements): empty lists if nothing."""
        return dict(self.data.tensorrt)

    @property
    def engines(self) -> Engines | None:
        """The engines the export built here and why (None for folders exported before it was recorded)."""
        return self.data.engines

    @property
    def deployment(self) -> Deployment | None:
        """The front and the candidate this folder ships (None for folders exported before the front)."""
        return self.data.deployment

    @property
    def deployed(self) -> str:
        """The shipped candidate's name: "ensemble" for folders exported before the front."""
        return self.data.deployment.candidate if self.data.deployment else "ensemble"

    def member_files(self) -> dict[str, str]:
        """{model name: its own fp32 graph's file}."""
        return {entry.model: name for name, entry in self.data.files.items() if entry.kind == "member"}

    # --- accuracy -------------------------------------------------------------------------------

    @property
    def accuracy_table(self) -> dict[str, dict]:
        """The export's accuracy rows by name ("pytorch-fp32", "fp32", "int8-cpu", ...)."""
        return dict(self.data.accuracy.table)

    @property
    def test_table(self) -> dict[str, dict]:
        """The same rows scored on the run's held-out test patients ({} when it had none, or for older folders)."""
        return dict(self.data.accuracy.test_table)

    def openvino_passed(self, precision: str) -> bool:
        """Whether the export scored `precision`'s CPU file as OpenVINO runs it and that row passed the
        gate (brainseg.export.openvino_rows); a folder exported without OpenVINO has no such rows."""
        entry = self.data.precisions.get(precision)
        use = entry.targets.get("cpu") if entry is not None else None
        row = use.openvino_row if use is not None else None
        return bool(row) and bool(self.data.accuracy.table.get(row, {}).get("passed"))

    def dice(self, precision: str, target: str, split: str = "val", *, runtime: str | None = None) -> float | None:
        """The mean per-patient Dice of the file `precision` uses on `target`, on the "val" or "test"
        patients, as ONNX Runtime runs it (TensorRT: the ONNX file's row), or with `runtime="openvino"`
        as OpenVINO runs it (None when not scored)."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be val or test, got {split!r}")
        if not self.has_file(precision, target):
            return None
        use = self.data.precisions[precision].targets[target]
        row = use.openvino_row if runtime == "openvino" else use.row
        table = self.data.accuracy.table if split == "val" else self.data.accuracy.test_table
        return table.get(row, {}).get("dice_mean")

    @property
    def accuracy_facts(self) -> dict:
        """How the accuracy tables were made: {"reference", "max_dice_drop", "patients", "test_patients", ...}."""
        return {k: v for k, v in self.data.accuracy.to_dict().items() if k not in ("table", "test_table")}

    @property
    def versions(self) -> dict[str, str]:
        """The library versions the export ran with."""
        return dict(self.data.versions)

    @property
    def reference_dice(self) -> float | None:
        row = self.data.accuracy.table.get(self.data.accuracy.reference, {})
        return row.get("dice_mean")


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {TARGETS}")


def file_entry(folder: Path, name: str, **facts) -> FileEntry:
    """A `files` entry: sha256 and size of `folder/name`, plus facts such as kind and precision."""
    path = folder / name
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size, **facts)


def verify_files(folder: Path, data: ManifestData) -> list[str]:
    """Files that are missing or whose sha256 differs from the manifest's."""
    problems = []
    for name, entry in data.files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{name}: sha256 differs from the manifest (modified or corrupt)")
    return problems


def write_manifest(folder: Path, data: ManifestData) -> Path:
    """Write `folder/manifest.json` atomically, after reading it back through the same sections
    (ValueError: a bug in the writer)."""
    raw = data.to_dict()
    try:
        ManifestData.from_dict(json.loads(json.dumps(raw)))
    except SchemaError as err:
        raise ValueError(f"refusing to write an invalid manifest: {err}") from err
    path = Path(folder) / MANIFEST
    write_atomic(path, json.dumps(raw, indent=2) + "\n")
    return path
