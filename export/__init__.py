"""Offline export: Hugging Face checkpoint -> validated ONNX / OpenVINO in the model repository."""
