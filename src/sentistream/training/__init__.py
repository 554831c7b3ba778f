"""Training pipeline (needs the ``[train]`` extra: torch, transformers, onnx)."""
