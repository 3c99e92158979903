"""Which TensorRT engines `seg-export` builds beside its ONNX files, and the one line that says why.

`--engine auto` (the default) builds an engine for each GPU precision asked for (`--fp16`, and
`--int8`'s GPU file) whose ONNX file passed the accuracy gate, where TensorRT imports and a CUDA
GPU is visible; elsewhere it builds none and says how to build them on the target with
`seg-export engine`. `--engine yes` insists: a missing TensorRT or GPU, or no GPU precision to
build, is a ConfigError raised before any work is done. `--engine no` builds none.

No fp32 engine is built by the export: fp32 is always written, as the reference and the fallback,
not asked for, and each engine costs minutes of building. `seg-export engine ARTIFACTS
--precision fp32` builds one where it is wanted.

`check_request`, `choose_engines` and `with_outcome` are pure; `probe_host` looks at the machine:
TensorRT by importing it (as seg-run does), the GPU through cuda-python, never torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from brainseg.artifacts import cuda
from brainseg.artifacts.variants import variant
from brainseg.errors import BrainsegError, ConfigError, is_installed

ENGINE_CHOICES = ("auto", "yes", "no")
ENGINE_PRECISIONS = ("fp16", "int8")  # the GPU precisions an export builds engines for, in this order


@dataclass(frozen=True)
class Host:
    """What this machine has for building and running engines."""

    tensorrt: bool
    gpu: bool
    gpu_detail: str = ""  # why no GPU is visible, when none is

    def missing(self) -> list[str]:
        """What stops an engine being built here, as phrases; empty when nothing does."""
        missing = [] if self.tensorrt else ["TensorRT is not installed"]
        if not self.gpu:
            missing.append("no CUDA GPU is visible" + (f" ({self.gpu_detail})" if self.gpu_detail else ""))
        return missing


@dataclass(frozen=True)
class EngineChoice:
    """The engines to build (precisions, in ENGINE_PRECISIONS order) and why, as one line."""

    build: tuple[str, ...]
    reason: str


def probe_host() -> Host:
    """Whether TensorRT imports here and cuda-python sees a CUDA device."""
    gpu, detail = _cuda_device()
    return Host(tensorrt=is_installed("tensorrt"), gpu=gpu, gpu_detail=detail)


def _cuda_device() -> tuple[bool, str]:
    try:
        runtime = cuda.import_cudart()
        error, count = runtime.cudaGetDeviceCount()
    except BrainsegError:
        return False, "cuda-python is not installed"
    except (OSError, RuntimeError) as err:  # the CUDA runtime library itself did not load
        return False, f"the CUDA runtime did not load: {err}"
    if int(error) != 0:
        return False, f"cudaGetDeviceCount: {getattr(error, 'name', error)}"
    return (True, "") if count else (False, "cudaGetDeviceCount: 0 devices")


def check_choice(asked: str) -> None:
    """Refuse an `--engine` value that is not one of ENGINE_CHOICES."""
    if asked not in ENGINE_CHOICES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINE_CHOICES)}; got {asked!r}")


def check_request(asked: str, host: Host | None, requested: Sequence[str], *, artifacts: str = "ARTIFACTS") -> None:
    """Refuse an `--engine` value that cannot be honoured, before the export starts.

    `requested`: the GPU precisions asked for (a subset of ENGINE_PRECISIONS); `host` may be None
    only under `--engine no`, which needs nothing from the machine; `artifacts` names the folder
    in the how-to-build hint.
    """
    check_choice(asked)
    if asked == "no":
        return
    if host is None:
        raise ValueError(f"--engine {asked} needs the host probed (probe_host)")
    if asked != "yes":
        return
    if not _ordered(requested):
        raise ConfigError("--engine yes builds engines for --fp16 and for --int8's GPU file, and neither was "
                          "asked for (--int8-activations uint8 writes no GPU file); add --fp16 or --int8, or "
                          f"build an fp32 engine with {_command(artifacts, 'fp32')}")
    if host.missing():
        raise ConfigError(f"--engine yes, but {' and '.join(host.missing())} here; use --engine auto, or build "
                          f"the engines on the target with {_commands(artifacts, _ordered(requested))}")


def choose_engines(asked: str, host: Host | None, requested: Sequence[str], passed: Sequence[str], *,
                   artifacts: str = "ARTIFACTS") -> EngineChoice:
    """The engines to build: each `requested` GPU precision in `passed` (its ONNX file passed the gate).

    `asked` is --engine (auto, yes, no); `artifacts` names the folder in the how-to-build hint.
    Raises ConfigError where `check_request` does.
    """
    check_request(asked, host, requested, artifacts=artifacts)
    requested = _ordered(requested)
    if not requested:
        return EngineChoice((), "engines: none to build: they are built for --fp16 and --int8's GPU file, "
                                f"and neither was asked for (an fp32 engine: {_command(artifacts, 'fp32')})")
    hint = f"build them on the target with {_commands(artifacts, requested)}"
    if asked == "no":
        return EngineChoice((), f"engines: not built (--engine no); {hint}")
    if host.missing():
        return EngineChoice((), f"engines: not built: {' and '.join(host.missing())} here; {hint}")
    build = tuple(p for p in requested if p in passed)
    failed = " and ".join(p for p in requested if p not in passed)
    if not build:
        return EngineChoice((), f"engines: not built: {failed} failed the ONNX accuracy gate")
    reason = (f"engines: built here for {' and '.join(build)} (TensorRT and a CUDA GPU are present), "
              "each scored through the same accuracy gate")
    if failed:
        reason += f"; none for {failed}, which failed the ONNX accuracy gate"
    return EngineChoice(build, reason)


def with_outcome(choice: EngineChoice, passed: Mapping[str, bool]) -> str:
    """`choice.reason`, plus which built engines failed the gate and were removed (`passed`: precision -> passed)."""
    failed = [precision for precision in choice.build if not passed.get(precision, False)]
    if not failed:
        return choice.reason
    rows = " and ".join(variant(p, "gpu", "tensorrt").row for p in failed)
    one = len(failed) == 1
    return f"{choice.reason}; {rows} failed it and {'was' if one else 'were'} removed (seg-run never sees " \
           f"{'it' if one else 'them'})"


def _ordered(precisions: Sequence[str]) -> tuple[str, ...]:
    unknown = [p for p in precisions if p not in ENGINE_PRECISIONS]
    if unknown:
        raise ValueError(f"engines are built for {', '.join(ENGINE_PRECISIONS)} only, not {', '.join(unknown)}")
    return tuple(p for p in ENGINE_PRECISIONS if p in precisions)


def _command(artifacts: str, precision: str) -> str:
    return f"`seg-export engine {artifacts} --precision {precision}`"


def _commands(artifacts: str, precisions: Sequence[str]) -> str:
    return " and ".join(_command(artifacts, p) for p in precisions)
