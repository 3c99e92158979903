"""cuda-python, imported lazily: the runtime API module, one error checker, and the GPU's identity.

Every CUDA call goes through `cuda_call`, which turns an error code into an exception naming the
call; cuda-python returns `(error, *values)` tuples instead of raising.
"""

from __future__ import annotations

from typing import Any

from brainseg.errors import BrainsegError, require


def import_cudart() -> Any:
    """cuda-python's runtime API module (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6)."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        return require("cuda.cudart", "gpu", package="cuda-python")
    return runtime


def cuda_call(name: str, result: tuple):
    """Unpack a cuda-python result `(error, *values)`; a non-zero error raises a BrainsegError naming `name`."""
    error, *values = result
    if int(error) != 0:  # cudaSuccess and CUDA_SUCCESS are both 0
        raise BrainsegError(f"CUDA call {name} failed: {getattr(error, 'name', error)} ({int(error)})")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_identity(device: int | None = None) -> tuple[str, str]:
    """(name, "major.minor" compute capability) of a CUDA device, the current one by default."""
    cudart = import_cudart()
    if device is None:
        device = cuda_call("cudaGetDevice", cudart.cudaGetDevice())
    props = cuda_call("cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.split("\x00", 1)[0].strip(), f"{props.major}.{props.minor}"
