"""Export: trained models -> one ONNX graph per precision (fp32, fp16, int8), checked in ONNX Runtime."""
