"""Faults a user's cluster and file system bring, each put to the real commands as their own processes.

    python benchmarks/faults.py ARTIFACTS [--out results/<isa>/faults.json]

Each fault is reproduced, the command run, and one row kept: what the run did (its exit code and
its own words), how long it took to finish, and what it wrote. The faults:

- ray_dying_worker: `seg-run --ray local` over 6 good slices, one whose reading process dies
  (`os._exit(137)` on opening it, as a decoder's segfault or an OOM kill) and one whose reader
  raises. The hook is a `sitecustomize` on the workers' PYTHONPATH: the product has no test hook.
  Target: ends within 120 s, 6 masks, both bad slices skipped with their reasons.
- stale_ray_cluster_file: `--ray local` with a `/tmp/ray/ray_current_cluster` naming a dead
  cluster (restored afterwards). Target: runs on a Ray of its own, exit 0.
- local_kill9_resume: `seg-run` (no Ray) killed with SIGKILL once its first scans are written,
  then run again. Target: the second run does only what is missing, no temporary file is left,
  and the masks equal those of a run that was never killed.
- resume_other_artifacts: a run with ARTIFACTS, then the same command with a copy whose threshold
  is halved (another manifest sha256). Target: exit 2 naming both, not one byte changed; with
  `--overwrite` every scan redone under the new manifest.
- huge_declared_volume: a 352-byte NIfTI declaring 1024^3 voxels among good slices. Target: skipped
  with the size and the limit, peak RSS of the whole run under 1 GB.
- triton_overwrite_foreign / triton_add_shared: `seg-export triton --overwrite` on a repository
  with another team's model (refused, nothing touched), then `--add` into it (theirs untouched).

Rows are {fault, did, seconds, written, target, met, hung}; `all_met` says whether every target was.

Needs the distributed and triton extras. Only the command's own peak RSS counts (`wait4`).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _process import console_script
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description
from brainseg.data.synthetic.sample import SampleSpec, cached_sample_dataset

TIMEOUT_S = 300  # a run still going after this is reported as hung and killed

# Loaded by Ray's workers through PYTHONPATH: dies on opening one file, raises on opening another.
_FAULTS_ON_OPEN = """import os, sys
_die, _raise = os.environ.get("FAULTS_DIE_ON"), os.environ.get("FAULTS_RAISE_ON")
if _die:
    def _fault_on_open(event, args):
        if event == "open" and args and isinstance(args[0], str):
            if args[0].endswith(_die):
                os._exit(137)
            if args[0].endswith(_raise):
                raise RuntimeError("injected by benchmarks/faults.py")
    sys.addaudithook(_fault_on_open)
"""


def _slices(count: int) -> list[Path]:
    sample = cached_sample_dataset(SampleSpec(patients=max(1, -(-count // 16)), slices=16))
    return sorted(p for p in sample.rglob("*.tif") if not p.stem.endswith("_mask"))[:count]


def _inputs(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for i, source in enumerate(_slices(count)):
        shutil.copyfile(source, folder / f"s{i:03d}.tif")
    return folder


def _run(command: list[str], env: dict | None = None, kill_when=None) -> dict:
    """Run `command` in its own session; {"exit_code", "seconds", "peak_rss_mb", "hung", "stderr_tail"}.
    `kill_when()` is polled, and the session killed with SIGKILL once it returns True."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True, env=env,
                                   start_new_session=True)
        hung = killed = False
        while process.poll() is None:
            if kill_when is not None and not killed and kill_when():
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
            elif time.perf_counter() - started > TIMEOUT_S:
                os.killpg(process.pid, signal.SIGKILL)
                hung = True
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        errors.seek(0)
        tail = [line for line in errors.read().splitlines() if line.strip()][-3:]
    if not hung:  # Ray's own processes of the session, if any survived the driver
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"exit_code": process.returncode, "seconds": round(seconds, 2), "hung": hung, "killed": killed,
            "stderr_tail": tail}


def _measured(command: list[str]) -> dict:
    """Run `command` to its end; its exit code, seconds and own peak RSS (MB, from wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    return {"exit_code": os.waitstatus_to_exitcode(status), "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "stderr_tail": errors.strip().splitlines()[-3:]}


def _seg_run(inputs: Path, artifacts: Path, out: Path, *extra: str) -> list[str]:
    return [console_script("seg-run"), str(inputs), "--artifacts", str(artifacts), "--out", str(out),
            "--no-overlays", *extra]


def _masks(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "masks").rglob("*.png"))} \
        if (out / "masks").is_dir() else {}


def _summary(out: Path) -> dict:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _leftovers(out: Path) -> list[str]:
    """Temporaries of atomic writes (`.<name>.<random>.tmp`): what a write killed midway leaves; never
    renamed, so never taken for an output."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp") if p.is_file())


def ray_dying_worker(artifacts: Path, work: Path) -> dict:
    inputs = _inputs(work / "in", 8)
    (inputs / "s006.tif").rename(inputs / "poison.tif")
    (inputs / "s007.tif").rename(inputs / "raising.tif")
    hook = work / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_FAULTS_ON_OPEN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
           "FAULTS_DIE_ON": "poison.tif", "FAULTS_RAISE_ON": "raising.tif"}
    result = _run(_seg_run(inputs, artifacts, work / "out", "--ray", "local", "--batch-size", "8"), env=env)
    summary, masks = _summary(work / "out"), _masks(work / "out")
    skipped = {Path(item["path"]).name: item["reason"] for item in summary.get("skipped", [])}
    met = (not result["hung"] and result["seconds"] < 120 and len(masks) == 6
           and set(skipped) == {"poison.tif", "raising.tif"} and result["exit_code"] == 1)
    return {"fault": "ray_dying_worker", "did": f"exit {result['exit_code']}; skipped {skipped}",
            "seconds": result["seconds"], "written": f"{len(masks)} masks of 6 good slices",
            "target": "ends < 120 s, 6 masks, both bad slices skipped with reasons", "met": met,
            "hung": result["hung"]}


def stale_ray_cluster_file(artifacts: Path, work: Path) -> dict:
    inputs = _inputs(work / "in", 2)
    stale = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray")) / "ray_current_cluster"
    kept = stale.read_bytes() if stale.is_file() else None
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("127.0.0.1:1\n")  # a cluster that is gone
    try:
        result = _run(_seg_run(inputs, artifacts, work / "out", "--ray", "local"))
    finally:
        if kept is None:
            stale.unlink(missing_ok=True)
        else:
            stale.write_bytes(kept)
    masks = _masks(work / "out")
    return {"fault": "stale_ray_cluster_file", "did": f"exit {result['exit_code']}" + (
                f"; {result['stderr_tail'][-1]}" if result["exit_code"] else ""),
            "seconds": result["seconds"], "written": f"{len(masks)} masks of 2",
            "target": "--ray local starts its own Ray, exit 0", "met": result["exit_code"] == 0 and len(masks) == 2,
            "hung": result["hung"]}


def local_kill9_resume(artifacts: Path, work: Path) -> dict:
    inputs = _inputs(work / "in", 96)
    clean = _run(_seg_run(inputs, artifacts, work / "clean", "--batch-size", "4"))
    out = work / "out"
    rows = out / ".rows"
    killed = _run(_seg_run(inputs, artifacts, out, "--batch-size", "4"),
                  kill_when=lambda: rows.is_dir() and sum(1 for _ in rows.rglob("*.json")) >= 8)
    done_at_kill = sum(1 for _ in rows.rglob("*.json")) if rows.is_dir() else 0
    leftovers = _leftovers(out)
    again = _run(_seg_run(inputs, artifacts, out, "--batch-size", "4"))
    summary = _summary(out)
    same = _masks(out) == _masks(work / "clean") and len(_masks(out)) == 96
    met = (killed["killed"] and again["exit_code"] == 0 and summary.get("resumed", 0) >= done_at_kill and same
           and clean["exit_code"] == 0)
    return {"fault": "local_kill9_resume",
            "did": f"killed after {done_at_kill} of 96 scans; rerun exit {again['exit_code']}, "
                   f"resumed {summary.get('resumed')}, did {summary.get('done')}",
            "seconds": again["seconds"], "written": f"masks identical to an unkilled run: {same}; "
                                                    f"temporaries after the kill: {leftovers or 'none'}",
            "target": "resume does only what is missing, no half file, same masks", "met": met,
            "hung": killed["hung"] or again["hung"]}


def resume_other_artifacts(artifacts: Path, work: Path) -> dict:
    inputs = _inputs(work / "in", 4)
    other = work / "other"
    shutil.copytree(artifacts, other)
    raw = json.loads((other / "manifest.json").read_text())
    raw["threshold"] = round(raw["threshold"] * 0.5, 6)
    (other / "manifest.json").write_text(json.dumps(raw, indent=2))
    out = work / "out"
    first = _run(_seg_run(inputs, artifacts, out))
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}
    refused = _run(_seg_run(inputs, other, out))
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}
    redone = _run(_seg_run(inputs, other, out, "--overwrite"))
    shas = {row["manifest_sha256"] for row in csv.DictReader((out / "results.csv").open())}
    met = (first["exit_code"] == 0 and refused["exit_code"] == 2 and before == after and redone["exit_code"] == 0
           and shas == {Manifest.load(other).sha256})
    return {"fault": "resume_other_artifacts",
            "did": f"exit {refused['exit_code']}: {refused['stderr_tail'][-1] if refused['stderr_tail'] else ''}",
            "seconds": refused["seconds"],
            "written": f"unchanged: {before == after}; --overwrite redid every scan under the new manifest: "
                       f"{shas == {Manifest.load(other).sha256}}",
            "target": "exit 2 naming both, nothing changed; --overwrite redoes all", "met": met,
            "hung": refused["hung"]}


def _nifti_claiming(shape: tuple[int, int, int]) -> bytes:
    """A gzipped NIfTI-1 header declaring `shape` of float32, followed by no voxels at all."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *shape, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 16, 32)  # float32
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352)
    header[344:348] = b"n+1\0"
    return gzip.compress(bytes(header) + b"\0" * 4)


def huge_declared_volume(artifacts: Path, work: Path) -> dict:
    inputs = _inputs(work / "in", 4)
    (inputs / "huge.nii.gz").write_bytes(_nifti_claiming((1024, 1024, 1024)))
    result = _measured(_seg_run(inputs, artifacts, work / "out"))
    summary, masks = _summary(work / "out"), _masks(work / "out")
    skipped = {Path(item["path"]).name: item["reason"] for item in summary.get("skipped", [])}
    met = result["exit_code"] == 1 and set(skipped) == {"huge.nii.gz"} and len(masks) == 4 \
        and result["peak_rss_mb"] < 1024
    return {"fault": "huge_declared_volume", "did": f"exit {result['exit_code']}; skipped {skipped}",
            "seconds": result["seconds"], "written": f"{len(masks)} masks of 4; peak RSS {result['peak_rss_mb']} MB",
            "target": "skipped naming size and limit, peak RSS < 1 GB", "met": met, "hung": False}


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def triton(artifacts: Path, work: Path) -> list[dict]:
    shared = work / "models"
    (shared / "their-model" / "1").mkdir(parents=True)
    (shared / "their-model" / "config.pbtxt").write_text('name: "their-model"\n')
    (shared / "their-model" / "1" / "model.onnx").write_bytes(b"another team's model")
    theirs = _tree(shared)
    command = [console_script("seg-export"), "triton", str(artifacts), "--out", str(shared), "--kind", "cpu",
               "--precision", "fp32"]
    refused = _run([*command, "--overwrite"])
    untouched = _tree(shared) == theirs
    added = _run([*command, "--add"])
    kept = {k: v for k, v in _tree(shared).items() if k in theirs} == theirs
    models = sorted(p.name for p in shared.iterdir() if p.is_dir())
    return [
        {"fault": "triton_overwrite_foreign",
         "did": f"exit {refused['exit_code']}: {refused['stderr_tail'][-1] if refused['stderr_tail'] else ''}",
         "seconds": refused["seconds"], "written": f"the repository untouched: {untouched}",
         "target": "refused in one line (seg-export's error exit code, 1), nothing touched",
         "met": refused["exit_code"] == 1 and len(refused["stderr_tail"]) == 1 and untouched,
         "hung": refused["hung"]},
        {"fault": "triton_add_shared", "did": f"exit {added['exit_code']}; models now {models}",
         "seconds": added["seconds"], "written": f"their model byte for byte as before: {kept}",
         "target": "written beside, theirs untouched",
         "met": added["exit_code"] == 0 and kept and "brainseg-fp32" in models, "hung": added["hung"]},
    ]


FAULTS = {"ray_dying_worker": ray_dying_worker, "stale_ray_cluster_file": stale_ray_cluster_file,
          "local_kill9_resume": local_kill9_resume, "resume_other_artifacts": resume_other_artifacts,
          "huge_declared_volume": huge_declared_volume, "triton": triton}


def table(rows: list[dict]) -> str:
    lines = ["| fault | what the run did | seconds | what was written | target met |", "|---|---|---|---|---|"]
    lines += [f"| {r['fault']} | {r['did']} | {r['seconds']} | {r['written']} | {'yes' if r['met'] else 'no'} |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--only", nargs="*", choices=sorted(FAULTS), help="run only these faults")
    parser.add_argument("--out", type=Path, help="keep the result here (JSON; the table beside it as .md)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="brainseg-faults-") as scratch:
        for name in args.only or FAULTS:
            print(f"fault: {name}", file=sys.stderr)
            found = FAULTS[name](args.artifacts.resolve(), Path(scratch) / name)
            rows += found if isinstance(found, list) else [found]
    result = {"machine": cpu_description(), "artifacts": str(args.artifacts),
              "manifest_sha256": Manifest.load(args.artifacts).sha256, "rows": rows,
              "all_met": all(r["met"] for r in rows)}
    emit(result, args.out)
    if args.out:
        args.out.with_suffix(".md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
