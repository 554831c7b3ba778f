"""ONNX Runtime backend: the default serving path (CPU int8, or CUDA when present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from sentistream.errors import ModelLoadError
from sentistream.runtime.base import FloatArray, IdArray

__all__ = ["OnnxBackend", "available_providers"]


def available_providers(preferred: list[str] | None = None) -> list[str]:
    """Providers to ask for: the preferred ones that exist, else CUDA (if built in) then CPU."""
    have = ort.get_available_providers()
    if preferred:
        chosen = [p for p in preferred if p in have]
        if not chosen:
            raise ModelLoadError(f"none of the providers {preferred} is available (have {have})")
        return chosen
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OnnxBackend:
    """One ``InferenceSession``; outputs are mapped to tasks by the manifest."""

    name = "onnx"

    def __init__(
        self,
        model_path: Path,
        task_outputs: dict[str, str],
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        providers: list[str] | None = None,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Threads spin-wait for the next batch by default; a stream worker idles between
        # batches, so let them sleep instead of burning cores shared with other replicas.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=available_providers(providers)
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"cannot load ONNX model {model_path}: {exc}") from exc
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if not {"input_ids", "attention_mask"} <= inputs:
            raise ModelLoadError(
                f"{model_path} must take input_ids and attention_mask (it takes {sorted(inputs)})"
            )
        missing = [o for o in task_outputs.values() if o not in outputs]
        if missing:
            raise ModelLoadError(f"{model_path} has no output(s) {missing} (has {sorted(outputs)})")
        self.needs_token_types = "token_type_ids" in inputs
        self.task_outputs = task_outputs
        self.output_names = list(task_outputs.values())
        self.providers = self.session.get_providers()

    def forward(self, input_ids: IdArray, attention_mask: IdArray) -> dict[str, FloatArray]:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.needs_token_types:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        results = self.session.run(self.output_names, feed)
        return {
            task: np.asarray(results[i], dtype=np.float32)
            for i, task in enumerate(self.task_outputs)
        }
