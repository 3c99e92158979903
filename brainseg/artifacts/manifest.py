"""manifest.json, read through one typed object: what an artifacts folder holds and how to feed it.

`seg-export` writes the manifest (`write_manifest`); everything else reads it as a `Manifest`,
whose properties and methods are the only way the rest of brainseg looks into it, so a renamed
key breaks in one place. Every file is listed with its sha256, and a folder whose files no longer
match is refused when it is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from brainseg.artifacts.layout import MANIFEST, OPENVINO_ONLY, PRECISIONS, PROBABILITY, TARGETS, engine_file
from brainseg.errors import ArtifactError
from brainseg.fileio import sha256_file, write_atomic
from brainseg.postprocess import PostProcessing

FORMAT = "brainseg-artifacts/2"
INPUT_DTYPES = ("uint8", "float32")
_REQUIRED = {
    "format": str, "input": dict, "outputs": dict, "threshold": float, "ensemble": dict,
    "files": dict, "precisions": dict, "accuracy": dict, "versions": dict, "source_run": dict,
}
_INPUT_KEYS = ("name", "dtype", "layout", "channels", "height", "width", "normalisation")


@dataclass(frozen=True)
class InputSpec:
    """What the graph takes: (N, height, width, channels) slices of `dtype`, named `name`.

    `normalisation` is applied inside the graph; `modalities` (float32 inputs from NIfTI) names
    the MRI sequences stacked as channels, in order; None for 8-bit inputs.
    """

    name: str
    dtype: str
    layout: str
    channels: int
    height: int
    width: int
    normalisation: dict
    modalities: tuple[str, ...] | None

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @classmethod
    def from_dict(cls, raw: dict) -> InputSpec:
        modalities = raw.get("modalities")
        return cls(name=raw["name"], dtype=raw["dtype"], layout=raw["layout"], channels=int(raw["channels"]),
                   height=int(raw["height"]), width=int(raw["width"]), normalisation=dict(raw["normalisation"]),
                   modalities=tuple(m.lower() for m in modalities) if modalities else None)


class Manifest:
    """An artifacts folder's manifest, validated (and by default its files' hashes checked) on load.

    Use `Manifest.load(folder)`; the constructor takes an already parsed and validated dict.
    """

    def __init__(self, folder: Path, raw: dict) -> None:
        self.folder = Path(folder)
        self._raw = raw
        self.input = InputSpec.from_dict(raw["input"])

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
        problems = validate(raw) if isinstance(raw, dict) else ["not a JSON object"]
        if not problems and verify:
            problems = verify_files(folder, raw)
        if problems:
            raise ArtifactError(f"{path}: " + "; ".join(problems))
        return cls(folder, raw)

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
        return float(self._raw["threshold"])

    @property
    def classes(self) -> int:
        return int(self._raw["outputs"][PROBABILITY]["classes"])

    @property
    def ensemble(self) -> dict:
        """{"members": [names], "weights": [floats], "weights_source": str}."""
        return dict(self._raw["ensemble"])

    @property
    def postprocessing(self) -> PostProcessing:
        """The TTA and component rule this folder runs with by default (none for folders older than the choice)."""
        return PostProcessing.from_dict(self._raw.get("postprocessing", {}).get("chosen"))

    @property
    def postprocessing_choice(self) -> dict:
        """How the default was chosen: {"chosen", "decided_on", "tta": {mode: val Dice}, "components": {...}}."""
        return dict(self._raw.get("postprocessing", {}))

    @property
    def source_run(self) -> Path:
        """The seg-train run folder the artifacts were exported from (possibly not on this machine)."""
        return Path(self._raw["source_run"]["path"])

    # --- files ----------------------------------------------------------------------------------

    @property
    def exported_precisions(self) -> list[str]:
        """Every precision that was exported, in PRECISIONS order, passed or not."""
        return [p for p in PRECISIONS if p in self._raw["precisions"]]

    def usable_precisions(self, target: str | None = None) -> list[str]:
        """The precisions that passed the accuracy gate (and have a file for `target`, when given)."""
        return [p for p in self.exported_precisions if self.passed(p) and (target is None or self.has_file(p, target))]

    def passed(self, precision: str) -> bool:
        return bool(self._raw["precisions"].get(precision, {}).get("passed"))

    def has_file(self, precision: str, target: str) -> bool:
        return target in self._raw["precisions"].get(precision, {}).get("targets", {})

    def file_for(self, precision: str, target: str) -> str:
        """The ONNX file of `precision` made for `target` ("gpu" or "cpu"); ArtifactError if there is none."""
        _check_target(target)
        entry = self._raw["precisions"].get(precision)
        if entry is None:
            raise ArtifactError(f"{self.folder}: precision {precision} was not exported; "
                                f"this folder has {', '.join(self.exported_precisions)}")
        if target not in entry["targets"]:
            made_for = ", ".join(entry["targets"])
            raise ArtifactError(f"{self.folder}: {precision} has no file for the {target} (only for the {made_for}); "
                                "export it with --int8-activations both")
        return entry["targets"][target]["file"]

    def path_for(self, precision: str, target: str) -> Path:
        return self.folder / self.file_for(precision, target)

    def engine_path(self, precision: str) -> Path:
        """Where the TensorRT engine of `precision` lives (compiled from its GPU file)."""
        return self.folder / engine_file(self.file_for(precision, "gpu"))

    @property
    def files(self) -> dict[str, dict]:
        """Every file by name with its facts: sha256, bytes, kind ("member" or "ensemble"), precision..."""
        return {name: dict(entry) for name, entry in self._raw["files"].items()}

    @property
    def graph_notes(self) -> dict[str, dict]:
        """What the export noted per file: simplification counts, int8 activation type and calibration."""
        return {name: dict(note) for name, note in self._raw.get("graph_notes", {}).items()}

    def member_files(self) -> dict[str, str]:
        """{model name: its own fp32 graph's file}."""
        return {entry["model"]: name for name, entry in self._raw["files"].items() if entry.get("kind") == "member"}

    # --- accuracy -------------------------------------------------------------------------------

    @property
    def accuracy_table(self) -> dict[str, dict]:
        """The export's accuracy rows by name ("pytorch-fp32", "fp32", "int8-cpu", ...)."""
        return dict(self._raw["accuracy"]["table"])

    @property
    def test_table(self) -> dict[str, dict]:
        """The same rows scored on the run's held-out test patients ({} when it had none, or for older folders)."""
        return dict(self._raw["accuracy"].get("test_table", {}))

    def openvino_passed(self, precision: str) -> bool:
        """Whether the export scored `precision`'s CPU file as OpenVINO runs it and that row passed the
        gate (brainseg.export.openvino_rows); a folder exported without OpenVINO has no such rows."""
        row = self._raw["precisions"].get(precision, {}).get("targets", {}).get("cpu", {}).get("openvino_row")
        return bool(row) and bool(self._raw["accuracy"]["table"].get(row, {}).get("passed"))

    def dice(self, precision: str, target: str, split: str = "val", *, runtime: str | None = None) -> float | None:
        """The mean per-patient Dice of the file `precision` uses on `target`, on the "val" or "test"
        patients, as ONNX Runtime runs it (TensorRT: the ONNX file's row), or with `runtime="openvino"`
        as OpenVINO runs it (None when not scored)."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be val or test, got {split!r}")
        if not self.has_file(precision, target):
            return None
        use = self._raw["precisions"][precision]["targets"][target]
        row = use.get("openvino_row") if runtime == "openvino" else use["row"]
        table = self._raw["accuracy"].get("table" if split == "val" else "test_table", {})
        return table.get(row, {}).get("dice_mean")

    @property
    def accuracy_facts(self) -> dict:
        """How the accuracy tables were made: {"reference", "max_dice_drop", "patients", "test_patients", ...}."""
        return {k: v for k, v in self._raw["accuracy"].items() if k not in ("table", "test_table")}

    @property
    def versions(self) -> dict[str, str]:
        """The library versions the export ran with."""
        return dict(self._raw["versions"])

    @property
    def reference_dice(self) -> float | None:
        row = self._raw["accuracy"]["table"].get(self._raw["accuracy"].get("reference", ""), {})
        return row.get("dice_mean")


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {TARGETS}")


def file_entry(folder: Path, name: str, **facts) -> dict:
    """A `files` entry: sha256 and size of `folder/name`, plus facts such as kind and precision."""
    path = folder / name
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, **facts}


def validate(raw: dict) -> list[str]:
    """Schema problems of a parsed manifest, as readable lines; empty when it is well formed."""
    problems = []
    for key, kind in _REQUIRED.items():
        if key not in raw:
            problems.append(f"missing key {key!r}")
        elif not isinstance(raw[key], kind) and not (kind is float and isinstance(raw[key], int)):
            problems.append(f"{key!r} should be {kind.__name__}, is {type(raw[key]).__name__}")
    if problems:
        return problems
    if raw["format"] != FORMAT:
        return [f"format is {raw['format']!r}, expected {FORMAT!r} (written by another brainseg version: "
                "export the run again)"]
    problems += [f"input lacks {k!r}" for k in _INPUT_KEYS if k not in raw["input"]]
    if raw["input"].get("dtype") not in INPUT_DTYPES:
        problems.append(f"input dtype {raw['input'].get('dtype')!r} is not one of {INPUT_DTYPES}")
    for precision, entry in raw["precisions"].items():
        problems += _precision_problems(raw, precision, entry)
    return problems


def _precision_problems(raw: dict, precision: str, entry: dict) -> list[str]:
    if precision not in PRECISIONS:
        return [f"unknown precision {precision!r}"]
    targets = entry.get("targets") if isinstance(entry, dict) else None
    if not isinstance(targets, dict) or not targets:
        return [f"precision {precision} lists no target files"]
    problems = []
    for target, use in targets.items():
        if target not in TARGETS:
            problems.append(f"precision {precision}: unknown target {target!r}")
        elif precision in OPENVINO_ONLY and target != "cpu":
            problems.append(f"precision {precision} is computed by OpenVINO on the cpu only, not the {target}")
        elif use.get("file") not in raw["files"]:
            problems.append(
                f"precision {precision} names {use.get('file')!r} for the {target}, which is not in 'files'")
    return problems


def verify_files(folder: Path, raw: dict) -> list[str]:
    """Files that are missing or whose sha256 differs from the manifest's."""
    problems = []
    for name, entry in raw["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (modified or corrupt)")
    return problems


def write_manifest(folder: Path, raw: dict) -> Path:
    """Write `folder/manifest.json` atomically after validating it (ValueError: a bug in the writer)."""
    problems = validate(raw)
    if problems:
        raise ValueError(f"refusing to write an invalid manifest: {'; '.join(problems)}")
    path = Path(folder) / MANIFEST
    write_atomic(path, json.dumps(raw, indent=2) + "\n")
    return path
