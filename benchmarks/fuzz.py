"""The long fuzz run of issue 32, and the same corpus put to a live seg-serve and to seg-run.

Three parts, each optional:

- targets (default): every target of `brainseg.fuzz.targets`, `--inputs` inputs each (50,000 by
  default), in worker processes with the malloc shim preloaded (`brainseg.fuzz.allocations`), two
  at a time. A worker that crashes, or whose progress stops for `--hang-s` (then it is killed),
  has its input recorded as a crash or a hang, and its chunk's other inputs run again. Each
  broken contract's input is saved in `fuzz_reproducers/` beside the JSON.
- `--guided-s SECONDS`: then each target for that long under coverage-guided fuzzing (atheris,
  `brainseg.fuzz.guided`; `pip install atheris`), same contract and shim; a broken contract stops
  the target's run and its input is saved with the others.
- `--serve ARTIFACTS`: a fresh `seg-serve` (embedded, default limits) on loopback gets the corpus:
  `--bodies` inputs of the serve corpus (every family, Content-Type as the bytes say, some sent
  as another type), issue 32's reproducers, and any files in `--reproducers DIR`, from two
  clients at once, while a third polls /healthz every 50 ms. Target: no 5xx, every answer within
  2 s, /healthz within 0.5 s throughout, the server's peak memory up by less than 300 MB.
- `--run ARTIFACTS`: the same corpus as files (plus good slices and volumes) in one folder for
  `seg-run`. Target: exit code 1, no traceback, every bad file skipped and named, every good one
  segmented.

`--checkout DIR` runs seg-serve and seg-run from another checkout of brainseg (its `brainseg/`
first on the path), to put the same corpus to another version: for the one before issue 32,
`git worktree add /tmp/before d56610c` and `--checkout /tmp/before`.

    python benchmarks/fuzz.py --out benchmarks/results/<machine>/fuzz.json \\
        [--serve demo/artifacts --run demo/artifacts] [--inputs 50000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from _process import console_script
from _report import emit
from _serve_clients import free_port, request
from _serve_hostile import PeakRss

from brainseg.bench.environment import cpu_description, machine_name
from brainseg.fuzz import allocations
from brainseg.fuzz.mutate import make_input
from brainseg.fuzz.seeds import FAMILIES, seeds
from brainseg.fuzz.targets import SLACK, TARGETS
from brainseg.serve.formats import sniff
from brainseg.serve.service import wait_until_healthy

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "nifti": ".nii", "nifti_gz": ".nii.gz"}
MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff", "bmp": "image/png",
         "nifti": "application/x-nifti", "nifti_gz": "application/gzip"}


# --- the long run of every target -------------------------------------------------------------------


def run_targets(args: argparse.Namespace, work: Path, shim: Path) -> dict:
    env = {**os.environ, **allocations.environment(shim)}
    reports = {}
    for name in args.targets:
        started = time.perf_counter()
        chunks = [(start, min(args.chunk, args.inputs - start)) for start in range(0, args.inputs, args.chunk)]
        parts = _run_chunks(name, chunks, args, work, env)
        reports[name] = _merge(name, parts, args.seed, time.perf_counter() - started)
        _save_reproducers(reports[name], args.out_folder)
        print(f"{name}: {reports[name]['inputs']} inputs, {len(reports[name]['failures'])} broken contracts, "
              f"{reports[name]['wall_s']:.0f} s", file=sys.stderr)
    return reports


def _run_chunks(name: str, chunks: list[tuple[int, int]], args, work: Path, env: dict) -> list[dict]:
    """Run the chunks of one target, `args.workers` processes at a time; a hang ends a chunk early."""
    todo, running, parts = list(chunks), [], []
    while todo or running:
        while todo and len(running) < args.workers:
            start, count = todo.pop(0)
            running.append(_Worker(name, args.seed, start, count, work, env))
        time.sleep(0.2)
        for worker in list(running):
            outcome = worker.poll(args.hang_s)
            if outcome is None:
                continue
            running.remove(worker)
            parts.append(outcome)
            if "stopped_at" in outcome:  # its report is lost: redo the inputs before, go on after
                at, end = outcome["stopped_at"], worker.start + worker.count
                again = ((worker.start, at - worker.start), (at + 1, end - at - 1))
                todo[:0] = [(start, count) for start, count in again if count > 0]
    return parts


class _Worker:
    """`python -m brainseg.fuzz` on one chunk, watched through its progress file."""

    def __init__(self, name: str, seed: int, start: int, count: int, work: Path, env: dict) -> None:
        self.name, self.seed, self.start, self.count = name, seed, start, count
        self.progress = work / f"{name}-{start}.progress"
        self.progress.write_bytes(struct.pack("<q", start - 1))
        self.out = work / f"{name}-{start}.json"
        command = [sys.executable, "-m", "brainseg.fuzz", name, "--seed", str(seed), "--start", str(start),
                   "--count", str(count), "--progress", str(self.progress), "--out", str(self.out)]
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                        stderr=open(work / f"{name}-{start}.log", "w"))
        self.seen, self.since = start - 1, time.monotonic()

    def poll(self, hang_s: float) -> dict | None:
        """None while it runs; its report when it ended; the input it stopped on when it crashed or hung."""
        if self.process.poll() is not None:
            if self.process.returncode == 0:
                return json.loads(self.out.read_text())[0]
            return self._stopped("crash", f"the worker process ended with code {self.process.returncode}")
        (index,) = struct.unpack("<q", self.progress.read_bytes()[:8])
        if index != self.seen:
            self.seen, self.since = index, time.monotonic()
        elif time.monotonic() - self.since > hang_s:
            self.process.kill()
            self.process.wait()
            return self._stopped("hang", f"no answer in {hang_s:g} s")
        return None

    def _stopped(self, kind: str, detail: str) -> dict:
        """The one input a dead worker was on, as a failure; the chunk's other inputs are run again."""
        (index,) = struct.unpack("<q", self.progress.read_bytes()[:8])
        index = max(index, self.start)
        failure = {"target": self.name, "seed": self.seed, "index": index, "kind": kind, "detail": detail,
                   "seconds": 0.0, "allocated": 0, "bound": 0}
        return {"target": self.name, "inputs": 1, "accepted": 0, "refused": 0, "seconds": 0.0, "slowest_s": 0.0,
                "counted_allocations": True, "largest_allocation": 0, "largest_ratio": 0.0, "failures": [failure],
                "stopped_at": index}


def _merge(name: str, parts: list[dict], seed: int, wall: float) -> dict:
    total = {"target": name, "what": TARGETS[name].what, "seed": seed, "deadline_s": TARGETS[name].deadline_s,
             "allocation_slack_bytes": SLACK, "wall_s": round(wall, 1)}
    for key in ("inputs", "accepted", "refused"):
        total[key] = sum(part[key] for part in parts)
    total["call_seconds"] = round(sum(part["seconds"] for part in parts), 1)
    total["slowest_s"] = max(part["slowest_s"] for part in parts)
    total["largest_allocation_bytes"] = max(part["largest_allocation"] for part in parts)
    total["largest_allocation_over_bound"] = max(part["largest_ratio"] for part in parts)
    total["allocations_counted"] = all(part["counted_allocations"] for part in parts)
    total["failures"] = [failure for part in parts for failure in part["failures"]]
    total["failures_by_kind"] = dict(Counter(failure["kind"] for failure in total["failures"]))
    return total


def _save_reproducers(report: dict, folder: Path) -> None:
    for failure in report["failures"]:
        folder.mkdir(parents=True, exist_ok=True)
        body = make_input(report["target"], TARGETS[report["target"]].families, failure["seed"], failure["index"])
        (folder / f"{report['target']}-{failure['seed']}-{failure['index']}.bin").write_bytes(body)


def run_guided(args: argparse.Namespace, work: Path, shim: Path) -> dict:
    env = {**os.environ, **allocations.environment(shim)}
    results = {}
    for name in args.targets:
        folder = args.out_folder / f"guided-{name}-"
        folder.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "brainseg.fuzz.guided", name, str(work / f"corpus-{name}"),
                   f"-max_total_time={args.guided_s}", f"-timeout={max(10, int(args.hang_s))}", "-max_len=1048576",
                   "-rss_limit_mb=16384", f"-artifact_prefix={folder}", "-print_final_stats=1"]
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=args.guided_s + 600)
        runs = [line for line in done.stderr.splitlines() if line.startswith("Done ")]
        broken = [line.strip() for line in done.stderr.splitlines() if "ContractBroken:" in line][:1]
        results[name] = {"runs": int(runs[-1].split()[1]) if runs else 0, "seconds": args.guided_s,
                         "exit_code": done.returncode, "broken_contract": broken[0] if broken else None,
                         "saved": sorted(p.name for p in folder.parent.glob(f"{folder.name}*"))}
        print(f"{name} (guided): {results[name]['runs']} runs, exit code {done.returncode}", file=sys.stderr)
    return results


# --- the corpus, as bodies and as files -------------------------------------------------------------


def issue_reproducers() -> dict[str, bytes]:
    """The inputs issue 32 reports, built as it describes them."""
    import gzip
    import zlib

    def chunk(kind: bytes, body: bytes, length: int | None = None) -> bytes:
        size = len(body) if length is None else length
        return struct.pack(">I", size) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png_1x1 = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    entries = [(256, 3, 1, 64), (257, 3, 1, 64), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (277, 3, 1, 1)]

    def tiff(extra: list[tuple[int, int, int, int]], first: list | None = None) -> bytes:
        table = (first or []) + entries + extra
        return (b"II*\0" + struct.pack("<I", 8 + 256) + bytes(256) + struct.pack("<H", len(table))
                + b"".join(struct.pack("<HHII", *e) for e in table) + bytes(4))

    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, 10, 10, 10, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    bomb = zlib.compressobj(9, wbits=31)
    inflating = bomb.compress(bytes(header) + bytes(1000)) + b"".join(bomb.compress(bytes(2**20)) for _ in range(600))
    far_offset, infinite = bytearray(header) + bytes(1000), bytearray(header) + bytes(1000)
    struct.pack_into("<f", far_offset, 108, 2.3e12)
    struct.pack_into("<f", infinite, 108, float("inf"))
    return {
        "nifti2_magic_only.nii": b"\x1c\x02\x00\x00n+2\x00\r\n\x1a\n",
        "empty_gzip_members.nii.gz": gzip.compress(b"") * 200_000,
        "png_text_chunk_2gib.png": png_1x1 + struct.pack(">I", 0x7FFFFFF0) + b"tEXt" + b"abcd",
        "png_text_chunk_4gib.png": png_1x1 + struct.pack(">I", 0xFFFFFFFF) + b"tEXt" + b"abcd",
        "tiff_tiles_2_20.tif": tiff([(322, 4, 1, 2**20), (323, 4, 1, 2**20), (324, 4, 1, 8), (325, 4, 1, 256)]),
        "tiff_duplicate_length.tif": tiff([(273, 4, 1, 8), (279, 4, 1, 256)], first=[(257, 4, 1, 60000)]),
        "tiff_4_bytes.tif": b"II*\0",
        "gzip_bomb_10_cubed.nii.gz": inflating + bomb.flush(),
        "nifti_offset_2e12.nii": bytes(far_offset),
        "nifti_offset_infinite.nii": bytes(infinite),
    }


def corpus(count: int, seed: int) -> list[tuple[str, bytes, str]]:
    """(name, body, family) of `count` fuzzed inputs over every family, then issue 32's reproducers."""
    items = []
    for index in range(count):
        body = make_input("serve", FAMILIES, seed, index)
        family = _family_of(body) or FAMILIES[index % len(FAMILIES)]
        items.append((f"fuzz-{seed}-{index}{SUFFIXES[family]}", body, family))
    for name, body in issue_reproducers().items():
        items.append((name, body, _family_of(body) or "png"))
    return items


def _family_of(body: bytes) -> str | None:
    media = sniff(body)
    found = {"image/png": "png", "image/jpeg": "jpeg", "image/tiff": "tiff", "application/x-nifti": "nifti",
             "application/gzip": "nifti_gz"}.get(media)
    return "bmp" if found is None and body.startswith(b"BM") else found


# --- seg-serve under the corpus ---------------------------------------------------------------------


def run_serve(args: argparse.Namespace, work: Path) -> dict:
    items = corpus(args.bodies, args.seed) + _extra(args.reproducers)
    port = free_port()
    log = work / "serve.log"
    command = [sys.executable, "-m", "brainseg.serve.cli", "--artifacts", str(args.serve.resolve()),
               "--port", str(port)]
    with open(log, "w") as stream:
        server = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True,
                                  **_checkout(args))
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", timeout_s=300)
        return _put_to_server(port, server.pid, items)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _checkout(args: argparse.Namespace) -> dict:
    """subprocess arguments that run brainseg from `--checkout` when given."""
    if args.checkout is None:
        return {}
    root = str(args.checkout.resolve())
    return {"cwd": root, "env": {**os.environ, "PYTHONPATH": root}}


def _extra(folder: Path | None) -> list[tuple[str, bytes, str]]:
    if folder is None:
        return []
    return [(path.name, path.read_bytes(), _family_of(path.read_bytes()) or "png")
            for path in sorted(folder.iterdir()) if path.is_file()]


def _put_to_server(port: int, pid: int, items: list[tuple[str, bytes, str]]) -> dict:
    statuses: Counter[int] = Counter()
    slowest: list[tuple[float, str, int]] = []
    health: list[float] = []
    unhealthy = [0]  # /healthz answers other than 200 (or none within 10 s)
    done = threading.Event()
    queue = list(enumerate(items))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                index, (name, body, family) = queue.pop(0)
            media = sniff(body) if index % 5 else MEDIA[family]  # one in five as its family's nominal type
            started = time.perf_counter()
            status, _, _ = request(port, "POST", "/v1/segment", body, {"Content-Type": media or MEDIA[family]},
                                   timeout=60)
            seconds = time.perf_counter() - started
            with lock:
                statuses[status] += 1
                slowest.append((seconds, name, status))

    def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            status, _, _ = request(port, "GET", "/healthz", timeout=10)
            health.append(time.perf_counter() - started)
            unhealthy[0] += status != 200
            done.wait(0.05)

    with PeakRss(pid) as memory:
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        clients = [threading.Thread(target=client) for _ in range(2)]
        began = time.perf_counter()
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        wall = time.perf_counter() - began
        done.set()
        prober.join()
    slowest.sort(reverse=True)
    five = sum(n for status, n in statuses.items() if status >= 500 or status == 0)
    result = {
        "bodies": len(items), "wall_s": round(wall, 1), "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors_or_dropped": five, "slowest_answers_s": [(round(s, 3), name, status) for s, name, status
                                                                in slowest[:5]],
        "healthz_polls": len(health), "healthz_not_ok": unhealthy[0], "healthz_slowest_s": round(max(health), 3),
        "healthz_p99_s": round(sorted(health)[int(0.99 * (len(health) - 1))], 4),
        "server_peak_mb_above_start": memory.up_mb,
    }
    result["targets"] = {"no 5xx": five == 0, "every answer within 2 s": slowest[0][0] <= 2.0,
                         "/healthz within 0.5 s": max(health) <= 0.5 and not unhealthy[0],
                         "peak memory up < 300 MB": memory.up_mb < 300}
    return result


# --- seg-run over the corpus as files ---------------------------------------------------------------


def run_seg_run(args: argparse.Namespace, work: Path) -> dict:
    folder = work / "scans"
    folder.mkdir()
    items = corpus(args.files, args.seed + 1) + _extra(args.reproducers)
    for name, body, _ in items:
        (folder / name).write_bytes(body)
    good = _good_files(folder)
    out = work / "out"
    seg_run = [sys.executable, "-c", "from brainseg.cli import run_entry; run_entry()"] if args.checkout else \
        [console_script("seg-run")]
    command = [*seg_run, str(folder), "--artifacts", str(args.run.resolve()), "--out", str(out), "--no-progress",
               "--no-overlays"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, **_checkout(args))
    seconds = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    skipped = {Path(item["path"]).name for item in summary["skipped"]}
    rows = (out / "results.csv").read_text().splitlines()[1:] if (out / "results.csv").is_file() else []
    written = {row.split(",")[0] for row in rows}
    every = {name for name, _, _ in items} | set(good)
    unnamed = sorted(name for name in every if name not in skipped and _key(name) not in written)
    missing_good = sorted(name for name in good if _key(name) not in written)
    result = {
        "files": len(every), "good_files": len(good), "seconds": round(seconds, 1), "exit_code": done.returncode,
        "segmented": len(written), "skipped": len(skipped), "traceback": "Traceback" in done.stderr,
        "neither_segmented_nor_named": unnamed[:20], "good_not_segmented": missing_good,
        "reasons": Counter(_gist(item["reason"]) for item in summary["skipped"]).most_common(12),
    }
    result["targets"] = {"exit code 1": done.returncode == 1, "no traceback": not result["traceback"],
                         "every bad file skipped and named": not unnamed, "good files segmented": not missing_good}
    return result


def _gist(reason: str) -> str:
    """A skip reason without its numbers, to count reasons by kind."""
    return "".join("#" if c.isdigit() else c for c in reason.split(";")[0].split("(")[0])[:60]


def _good_files(folder: Path) -> list[str]:
    names = []
    for family in ("png", "jpeg", "tiff", "nifti", "nifti_gz"):
        for index, body in enumerate(seeds(family)[:3]):
            name = f"good-{family}-{index}{SUFFIXES[family]}"
            (folder / name).write_bytes(body)
            names.append(name)
    return names


def _key(name: str) -> str:
    return name.removesuffix(".gz").rsplit(".", 1)[0]


# --- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--inputs", type=int, default=50_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=10_000, help="inputs per worker process")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hang-s", type=float, default=60.0)
    parser.add_argument("--guided-s", type=int, default=0, help="seconds of coverage-guided fuzzing per target")
    parser.add_argument("--serve", type=Path, help="an artifacts folder: put the corpus to a live seg-serve")
    parser.add_argument("--run", type=Path, help="an artifacts folder: run seg-run over the corpus as files")
    parser.add_argument("--bodies", type=int, default=3000, help="fuzzed bodies sent to seg-serve")
    parser.add_argument("--files", type=int, default=1000, help="fuzzed files given to seg-run")
    parser.add_argument("--reproducers", type=Path, help="a folder of more bodies for seg-serve and seg-run")
    parser.add_argument("--checkout", type=Path, help="run seg-serve and seg-run from this checkout of brainseg")
    parser.add_argument("--out", type=Path, help=f"where to keep the JSON (e.g. benchmarks/results/{machine_name()}"
                                                 "/fuzz.json); reproducers go beside it")
    args = parser.parse_args()
    args.out_folder = (args.out.parent if args.out else Path(tempfile.mkdtemp(prefix="fuzz-"))) / "fuzz_reproducers"
    result = {"machine": cpu_description(), "command": " ".join(sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="brainseg-fuzz-") as scratch:
        work = Path(scratch)
        shim = allocations.build(work)
        if args.targets and args.inputs:
            result["targets"] = run_targets(args, work, shim)
        if args.targets and args.guided_s:
            result["guided"] = run_guided(args, work, shim)
        if args.serve:
            result["serve"] = run_serve(args, work)
        if args.run:
            result["seg_run"] = run_seg_run(args, work)
    emit(result, args.out)


if __name__ == "__main__":
    main()
