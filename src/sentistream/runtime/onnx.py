"""ONNX Runtime backend: the default serving path (CPU int8, or CUDA when present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from sentistream.errors import ModelLoadError
from sentistream.runtime.base import FloatArray, IdArray

__all__ = ["CPU_DISABLED_OPTIMIZERS", "GRAPH_OPTIMIZATION", "OnnxBackend", "available_providers"]

# On CPU, ORT's fused SkipLayerNormalization and BiasGelu kernels are slower than the ops they
# replace (sentistream.training.graph); models exported or rebuilt since carry the unfused
# form, and sessions on CPU keep ORT from fusing it back. GPUs keep the fusions.
CPU_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion", "BiasGeluFusion"]

# Names accepted for ``graph_optimization`` -> onnxruntime.GraphOptimizationLevel members.
GRAPH_OPTIMIZATION = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


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
        graph_optimization: str = "all",
        allow_spinning: bool = False,
        x64_quant_precision: bool = False,
        parallel_execution: bool = False,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL
            if parallel_execution
            else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        if graph_optimization not in GRAPH_OPTIMIZATION:
            raise ValueError(f"graph_optimization must be one of {sorted(GRAPH_OPTIMIZATION)}")
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[graph_optimization]
        )
        options.log_severity_level = 3
        # Threads spin-wait for the next batch by default; a stream worker idles between
        # batches, so let them sleep instead of burning cores shared with other replicas
        # (measured: docs/performance.md, tuning log).
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
        )
        if x64_quant_precision:
            # x86 CPUs without VNNI multiply uint8 x int8 with VPMADDUBSW, whose int16 pair sums
            # saturate for 8-bit weights outside [-64, 63]; ORT then runs those matmuls as
            # uint8 x uint8 instead (exact, slower). VNNI/AMX CPUs are unaffected.
            options.add_session_config_entry("session.x64quantprecision", "1")
        chosen = available_providers(providers)
        disabled = [] if "CUDAExecutionProvider" in chosen else CPU_DISABLED_OPTIMIZERS
        try:
            self.session = ort.InferenceSession(
                str(model_path),
                sess_options=options,
                providers=chosen,
                disabled_optimizers=disabled,
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
