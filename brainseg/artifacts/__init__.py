"""The contract between export and everything that runs an export: what an artifacts folder holds.

`seg-export` writes artifacts; `seg-run`, `seg-bench` and the TensorRT engine build read them,
and only through this package: the typed manifest (`manifest`), the file and tensor names
(`layout`), ONNX Runtime sessions (`sessions`), TensorRT engine provenance (`provenance`) and
the cuda-python helpers (`cuda`). Nothing here imports torch or `brainseg.export`.
"""
