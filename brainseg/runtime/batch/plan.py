"""What a seg-run works on and the steps every way of running it takes: options, plan, summary.

`plan_run` checks the options, loads the manifest and finds the scans; the `RunPlan` it returns
reads a scan into the graph's form, writes a scan's outputs, and finishes the run's files. The
local run (`brainseg.runtime.batch.pipeline`) and the Ray run (`brainseg.runtime.batch.ray_run`) both take
these steps, so they write the same files; each opens its model as a `Segmenter`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from brainseg.artifacts.manifest import Manifest
from brainseg.data.brats import DEFAULT_CONVENTION
from brainseg.data.volume import SkippedInput
from brainseg.errors import ConfigError, DataError
from brainseg.runtime import outputs
from brainseg.runtime.io import discovery
from brainseg.runtime.io.scans import Scan, ScanData
from brainseg.runtime.outputs import report_html, submission
from brainseg.runtime.segmenter import ScanSteps, Segmenter, SegmenterOptions

log = logging.getLogger("brainseg.runtime")


@dataclass(frozen=True)
class RunOptions(SegmenterOptions):
    """seg-run's options: how the model runs (`SegmenterOptions`: backend, precision, threads, TTA...)
    and how the run reads, queues and writes."""

    readers: int = 2
    queue_scans: int = 4  # each queue between stages: at most this many scans and queue_bytes (~1 BraTS case)
    queue_bytes: int = 192 * 2**20
    overwrite: bool = False
    save_probability: bool = False
    overlays: bool = True
    qc_threshold: float = 0.25
    ray: str | None = None  # "local" or a Ray cluster's address: run on Ray Data (brainseg.runtime.batch.ray_run)
    ray_actors: int = 1  # Ray: inference actors, one Segmenter (and one GPU where the cluster has GPUs) each
    max_attempts: int = 3  # Ray: a scan's task tried at most this often (its worker may die), then the scan is skipped
    submission: Path | None = None  # BraTS: also write <case>.nii.gz label maps here (outputs.submission)


@dataclass
class RunSummary:
    """What summary.json holds; `exit_code` is 0 when every input was done, 1 when some were skipped."""

    out: str
    backend: dict
    precision: str
    manifest_sha256: str
    postprocessing: dict = field(default_factory=dict)
    brats_labels: str | None = None  # a BraTS-regions model's label-map convention ("2021", "2023")
    scans: int = 0
    done: int = 0
    resumed: int = 0
    slices: int = 0
    skipped: list[dict] = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)
    slices_per_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.skipped else 0

    def count(self, key: str, slices: int, on_scan: Callable[[str, int], None] | None) -> None:
        """One more scan written: add it up and tell `on_scan`."""
        self.done, self.slices = self.done + 1, self.slices + slices
        if on_scan is not None:
            on_scan(key, slices)


@dataclass
class RunPlan:
    """What a run works on (see `plan_run`) and the steps both seg-run and seg-run --ray take with it."""

    manifest: Manifest
    scans: list[Scan]
    skipped: list[SkippedInput]  # inputs left out so far, with reasons; the run adds to it
    steps: ScanSteps
    out_options: outputs.OutputOptions

    def todo(self, out: Path, precision: str | None = None) -> list[Scan]:
        """Every scan with `overwrite`, else those an earlier run has not done.

        Raises ConfigError when a scan done earlier was made by other artifacts, post-processing or
        (when `precision` is given) precision than this run's: resuming would leave the other
        model's masks under this run's summary (`check_made_by`).
        """
        if self.out_options.overwrite:
            return self.scans
        done = [scan for scan in self.scans if outputs.is_done(out, scan)]
        self.check_made_by(out, done, precision)
        return [scan for scan in self.scans if scan not in done]

    def made_by(self, precision: str) -> dict:
        """What each row of this run records about the model that made it (outputs.MADE_BY); the
        label convention only for a BraTS-regions model (the others write no label map)."""
        regions = self.manifest.classes == outputs.BRATS_REGIONS
        return {"manifest_sha256": self.manifest.sha256, "precision": precision,
                "postprocessing": self.steps.post.describe(),
                "brats_labels": self.out_options.brats_labels if regions else ""}

    def check_made_by(self, out: Path, done: list[Scan], precision: str | None) -> None:
        """ConfigError naming both models when a done scan's row was made by another (see `todo`)."""
        wanted = self.made_by(precision or "")
        names = {"manifest_sha256": "artifacts (manifest sha256)", "precision": "precision",
                 "postprocessing": "post-processing", "brats_labels": "BraTS labels (--brats-labels)"}
        for scan in done:
            row = outputs.load_row(out, scan)
            if "brats_labels" not in row and row.get("manifest_sha256"):  # brainseg before it was recorded
                row["brats_labels"] = DEFAULT_CONVENTION if wanted["brats_labels"] else ""
            for field_name in outputs.MADE_BY:
                if field_name == "precision" and precision is None:
                    continue
                if row.get(field_name) != wanted[field_name]:
                    was = row.get(field_name) or "not recorded (an older brainseg)"
                    raise ConfigError(f"{out} holds scans made with other {names[field_name]}: {scan.key} has "
                                      f"{was}, this run {wanted[field_name]}; pass --overwrite to redo every scan, "
                                      "or choose another --out")

    def summary(self, out: Path, backend: dict, precision: str) -> RunSummary:
        post = {**self.steps.post.to_dict(), "description": self.steps.post.describe()}
        return RunSummary(str(out), backend, precision, self.manifest.sha256, post,
                          self.made_by(precision)["brats_labels"] or None, scans=len(self.scans))

    def open_segmenter(self, options: RunOptions) -> Segmenter:
        return Segmenter(self.manifest, options)

    def read(self, scan: Scan) -> tuple[ScanData, np.ndarray] | SkippedInput:
        """`ScanSteps.read`, or why the scan is skipped: unreadable, malformed, no slices."""
        try:
            data, image = self.steps.read(scan)
        except DataError as err:  # an InputSkipped names the file at fault and the reason
            return SkippedInput(getattr(err, "path", str(scan.paths[0])), getattr(err, "reason", str(err)))
        except Exception as err:  # a reader library choking on a file it should have refused: skip, keep going
            log.debug("reading %s failed", scan.paths[0], exc_info=True)
            return SkippedInput(str(scan.paths[0]), f"could not be read ({type(err).__name__}: {err})")
        return SkippedInput(str(scan.paths[0]), "has no slices") if data.num_slices == 0 else (data, image)

    def write(self, out: Path, data: ScanData, arrays: dict[str, np.ndarray]) -> SkippedInput | None:
        """`ScanSteps.finish_scan`, then `outputs.write_scan`; None once written, else why the scan is skipped."""
        try:
            outputs.write_scan(out, data, self.steps.finish_scan(data, arrays), self.out_options)
        except DataError as err:
            return SkippedInput(str(data.scan.paths[0]), getattr(err, "reason", str(err)))
        return None

    def finish(self, out: Path, summary: RunSummary, seconds: dict[str, float], wall: float) -> None:
        """Complete `summary`, then write results.csv, summary.json and report.html (every scan done, ever)."""
        summary.skipped = [{"path": s.path, "reason": s.reason} for s in self.skipped]
        summary.timings_s = {**{k: round(v, 3) for k, v in seconds.items()}, "wall": round(wall, 3)}
        summary.slices_per_s = round(summary.slices / wall, 2) if wall > 0 and summary.slices else 0.0
        if self.out_options.submission is not None:  # scans an earlier run did get their file from its label map
            submission.complete(self.out_options.submission, out, self.scans, outputs.label_map_file)
        outputs.write_results_csv(out, rows := outputs.collect_rows(out, self.scans))
        outputs.write_summary(out, record := {**asdict(summary), "exit_code": summary.exit_code})
        report_html.write_report_html(out, record, rows)


def plan_run(paths: Sequence[str | Path], artifacts: str | Path, options: RunOptions) -> RunPlan:
    """Check the options, load the manifest and find the scans (DataError when there are none)."""
    options.check()
    manifest = Manifest.load(artifacts)
    scans, skipped = discovery.discover([Path(p) for p in paths], manifest.input.modalities)
    if not scans and not skipped:
        raise DataError(f"no scans found under {', '.join(map(str, paths))}")
    if options.submission is not None:
        submission.check_cases(Path(options.submission), scans)
    return RunPlan(manifest, scans, skipped, ScanSteps.of(manifest, options), outputs.OutputOptions(
        overwrite=options.overwrite, save_probability=options.save_probability, overlays=options.overlays,
        qc_threshold=options.qc_threshold, manifest_sha256=manifest.sha256,  # the sha256 names the model in DICOM SEGs
        brats_labels=options.labels_for(manifest),
        submission=Path(options.submission) if options.submission is not None else None))
