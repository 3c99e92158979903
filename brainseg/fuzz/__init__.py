"""A seeded mutation fuzzer for every function of brainseg that reads bytes from outside.

`seeds` writes small valid files of each format (PNG, JPEG, TIFF, BMP, NIfTI-1/2, raw and gzip'd);
`mutate` derives input number i of a run from a seed file and (target, seed, i) alone, so any
input can be made again from three numbers; `targets` names each function under test with the
contract it must keep; `run` feeds them inputs and checks, per call, that the function returns or
raises the project's own error, within its deadline, allocating no more than its bound
(`allocations` counts native allocations too). `python -m brainseg.fuzz` runs one target in a
worker process; tests/test_fuzz.py runs a short seeded pass in `make test`, benchmarks/fuzz.py
the long one (docs/security.md).
"""
