"""What an export records about itself: the manifest of the folder it wrote, as typed sections.

`build_manifest` turns a trained run, the files written and their scores into the `ManifestData`
that `brainseg.artifacts.manifest.write_manifest` writes; the precisions it offers to the runtime
are the variant table's ONNX Runtime rows that were scored (`gated_precisions`).
"""

from __future__ import annotations

from datetime import datetime, timezone

from brainseg.artifacts.layout import DISAGREEMENT, INPUT_NAME, MASK, PROBABILITY, REFERENCE
from brainseg.artifacts.sections import (
    FORMAT,
    Accuracy,
    Deployment,
    Engines,
    Ensemble,
    FileEntry,
    InputSpec,
    ManifestData,
    OutputSpec,
    PrecisionEntry,
    ReaderSettings,
    SourceRun,
    TargetUse,
    TensorRTCheck,
)
from brainseg.artifacts.variants import FILE_PRECISIONS, TARGETS, VARIANTS
from brainseg.export import openvino_rows
from brainseg.export.trained_run import TrainedRun
from brainseg.machine import package_version

RESIZE = "area to shrink, linear to grow; probabilities resized back linearly"


def versions() -> dict[str, str]:
    """The versions of the packages the export ran with."""
    packages = ("brainseg", "torch", "segmentation-models-pytorch", "onnx", "onnxruntime", "onnxslim")
    return {package: package_version(package) or "not installed" for package in packages}


def gated_precisions(table: dict, int8_targets: tuple[str, ...]) -> dict[str, PrecisionEntry]:
    """Manifest `precisions`: for each exported precision, the file and accuracy row of each target
    it serves, and whether it passed the gate (every one of its files must pass)."""
    precisions = {}
    for name in FILE_PRECISIONS:
        targets = int8_targets if name == "int8" else TARGETS
        scored = [v for v in VARIANTS if v.precision == name and v.runtime == "onnxruntime" and v.target in targets
                  and v.row in table]
        if scored:
            precisions[name] = PrecisionEntry(passed=all(table[v.row]["passed"] for v in scored),
                                              targets={v.target: TargetUse(v.onnx_file, v.row) for v in scored})
    return precisions


def build_manifest(run: TrainedRun, *, files: dict[str, FileEntry], notes: dict, tensorrt: dict[str, TensorRTCheck],
                   tables: tuple[dict, dict], post_section: dict, parity: dict, ensemble: Ensemble,
                   max_dice_drop: float, int8_targets: tuple[str, ...], engines: Engines,
                   deployment: Deployment | None = None) -> ManifestData:
    """The manifest of an export of `run`: `tables` are the (validation, test) accuracy tables, gated."""
    table, test_table = tables
    precisions = openvino_rows.add_to_precisions(gated_precisions(table, int8_targets), table)
    config = run.config
    return ManifestData(
        format=FORMAT,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        input=InputSpec(name=INPUT_NAME, dtype=run.input_dtype, layout="NHWC", channels=run.in_channels,
                        height=run.img_size, width=run.img_size, normalisation=run.norm.to_dict(),
                        modalities=tuple(config.modalities) if run.input_dtype == "float32" else None,
                        resize=RESIZE),
        outputs={PROBABILITY: OutputSpec(dtype="float32", layout="NCHW", classes=run.classes),
                 MASK: OutputSpec(dtype="uint8", layout="NCHW", values=[0, 1]),
                 DISAGREEMENT: OutputSpec(dtype="float32", layout="NCHW", meaning="max minus min member probability")},
        threshold=float(run.threshold),
        ensemble=ensemble,
        postprocessing=post_section,
        files=files,
        precisions=precisions,
        accuracy=Accuracy(table=table, test_table=test_table, reference=REFERENCE, max_dice_drop=max_dice_drop,
                          fp32_parity_max_abs=parity, patients=len(run.split.val),
                          test_patients=len(run.split.test), scored_as_deployed=post_section["description"]),
        graph_notes=notes,
        tensorrt=tensorrt,
        versions=versions(),
        source_run=SourceRun(
            path=str(run.run_dir.resolve()), data=run.data, val_patients=list(run.split.val),
            test_patients=list(run.split.test),
            members={m.name: {"best_epoch": m.best_epoch, "val_dice": m.val_dice}
                     for m in [*run.members, *([run.student] if run.student else [])]},
            reader=ReaderSettings(layout=config.layout, modalities=list(config.modalities), target=config.target,
                                  patient_regex=config.patient_regex, sample_patients=config.sample_patients,
                                  sample_slices=config.sample_slices, seed=config.seed,
                                  brats_labels=run.brats_labels)),
        engines=engines,
        deployment=deployment,
    )
