"""The lean runtime behind `seg-run`: scans in, masks, overlays, volumes and tables out.

Needs numpy, OpenCV and one backend (ONNX Runtime, or TensorRT through cuda-python); never
imports torch, so it runs on a Jetson that carries only an artifacts folder.
"""
