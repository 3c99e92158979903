"""A short seeded fuzz run of every function that reads bytes from outside (benchmarks/fuzz.py runs the long one).

One worker process runs every target of `brainseg.fuzz.targets` on the same inputs at every run
(seed `SEED`), with the malloc shim preloaded so that native allocations (libpng, libtiff,
libjpeg, zlib) count against each call's bound. Any input that breaks a contract is reported with
the command that makes it again. The harness itself is checked on functions broken on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from brainseg.errors import FormatError
from brainseg.fuzz import allocations
from brainseg.fuzz.run import fuzz
from brainseg.fuzz.targets import SLACK, TARGETS, Target

pytest.importorskip("nibabel")

SEED = 20261208
COUNT = 2000  # inputs per target: about 10 s for all of them on a 2-core VM
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> Path | None:
    """The malloc shim, or None on a machine without a C compiler."""
    try:
        return allocations.build(tmp_path_factory.mktemp("shim"))
    except (RuntimeError, subprocess.CalledProcessError):
        return None


def _worker(args: list[str], shim: Path | None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **(allocations.environment(shim) if shim else {})}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def reports(shim, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("fuzz") / "reports.json"
    done = _worker(["-m", "brainseg.fuzz", *TARGETS, "--seed", str(SEED), "--count", str(COUNT), "--out", str(out)],
                   shim)
    assert done.returncode == 0, done.stderr[-3000:]
    return {report["target"]: report for report in json.loads(out.read_text())}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_input_keeps_the_contract(reports, target):
    report = reports[target]
    assert report["inputs"] == COUNT
    broken = [f"input {f['index']}: {f['kind']}: {f['detail']} (again: python -m brainseg.fuzz {target} --seed {SEED} "
              f"--start {f['index']} --count 1)" for f in report["failures"]]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("target", ["png", "jpeg", "tiff", "nifti_header", "read_image", "read_nifti", "read_scan"])
def test_the_inputs_reach_both_outcomes(reports, target):
    """A corpus that every parser refused at its first byte would test nothing past it."""
    report = reports[target]
    assert report["accepted"] >= COUNT // 10 and report["refused"] >= COUNT // 10, report


def test_native_allocations_were_counted(reports, shim):
    if shim is None:
        pytest.skip("no C compiler (cc or gcc) to build the malloc shim: allocations were not counted")
    assert all(report["counted_allocations"] for report in reports.values())
    assert reports["read_scan"]["largest_allocation"] > 0


# --- the harness catches what it is there to catch ---------------------------------------------------


def _broken(call, *, bound=lambda body: 0, deadline_s: float = 1.0, check=lambda body, result: None) -> Target:
    return Target("broken", "a function broken on purpose", ("png",), call, bound, deadline_s, check)


def _refuse(body: bytes):
    raise FormatError("refused")


def test_an_escaped_exception_a_late_call_and_a_wrong_result_are_failures():
    import time

    escapes = fuzz(_broken(lambda body: body[10**9]), seed=1, count=5)
    assert {f.kind for f in escapes.failures} == {"escape"} and len(escapes.failures) == 5
    assert "IndexError" in escapes.failures[0].detail
    late = fuzz(_broken(lambda body: time.sleep(0.02), deadline_s=0.01), seed=1, count=2)
    assert [f.kind for f in late.failures] == ["deadline", "deadline"]
    wrong = fuzz(_broken(len, check=lambda body, result: "too long" if result > 0 else None), seed=1, count=2)
    assert [f.kind for f in wrong.failures] == ["result", "result"]
    refused = fuzz(_broken(_refuse), seed=1, count=3)
    assert refused.failures == [] and refused.refused == 3


def test_an_allocation_over_the_bound_is_a_failure_native_or_not(shim):
    if shim is None:
        pytest.skip("no C compiler (cc or gcc) to build the malloc shim")
    script = (
        "import ctypes, json, numpy as np\n"
        "from brainseg.fuzz.run import fuzz\n"
        "from brainseg.fuzz.targets import Target\n"
        "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p\n"
        "def native(body):\n"
        "    libc.free(ctypes.c_void_p(libc.malloc(ctypes.c_size_t(64 << 20))))\n"  # 64 MiB, freed at once
        "def python(body):\n"
        "    return len(np.ones(40 << 20, np.uint8))\n"
        "def small(body):\n"
        "    return len(np.ones(1 << 20, np.uint8))\n"
        "out = {}\n"
        "for name, call in (('native', native), ('python', python), ('small', small)):\n"
        "    report = fuzz(Target(name, '', ('png',), call, lambda body: 0, 5.0), seed=1, count=2)\n"
        "    out[name] = [f.kind for f in report.failures]\n"
        "print(json.dumps(out))\n"
    )
    done = _worker(["-c", script], shim, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    kinds = json.loads(done.stdout.strip().splitlines()[-1])
    assert kinds == {"native": ["allocation", "allocation"], "python": ["allocation", "allocation"], "small": []}
    assert SLACK < 40 << 20
