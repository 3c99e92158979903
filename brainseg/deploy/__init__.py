"""Deploying exported files, torch-free: TensorRT engine builds and the checks before them, which
engines an export builds, and NVIDIA Triton model repositories. Reads artifacts; never imports torch."""
