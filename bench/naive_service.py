"""The naive baseline: the image-classification service a typical tutorial builds.

FastAPI with a multipart upload, PIL decode, torchvision transforms and PyTorch eager
inference of the same architecture and class count as the served model (random weights:
only the speed is compared), one request at a time on the event loop. Nothing here is
tuned; it is the bar that `scrapvision serve` must clear by a wide margin.

    python -m bench.naive_service --model models/ewaste/v1/model.onnx --port 8100
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from torchvision import transforms

from bench.common import default_model
from bench.standin import build_backbone, timm_architecture
from scrapvision.modelmeta import ModelInfo

PREDICT_PATH = "/predict"


def create_app(info: ModelInfo) -> FastAPI:
    model = build_backbone(info.num_classes, timm_architecture(info))
    input_size = info.input_size
    cfg = model.pretrained_cfg
    transform = transforms.Compose([
        transforms.Resize(input_size),
        transforms.ToTensor(),
        transforms.Normalize(cfg["mean"], cfg["std"]),
    ])
    app = FastAPI(title="naive classifier")

    @app.post(PREDICT_PATH)
    async def predict(file: UploadFile = File(...)) -> dict[str, float | int]:
        image = Image.open(io.BytesIO(await file.read())).convert("RGB")
        with torch.no_grad():
            probabilities = model(transform(image).unsqueeze(0)).softmax(dim=1)[0]
        confidence, index = probabilities.max(dim=0)
        return {"class_index": int(index), "confidence": float(confidence)}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def served_shape(model_path: Path) -> ModelInfo:
    """Class count and input size of the served model, read from its ONNX metadata."""
    import onnx  # noqa: PLC0415 - only needed to read metadata

    proto = onnx.load(str(model_path), load_external_data=False)
    return ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="served ONNX model whose class count and input size to copy")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    model = args.model or default_model()
    if not model.is_file():
        parser.error(f"no model at {model}: pass --model or run `python -m bench.standin`")
    info = served_shape(model)
    uvicorn.run(create_app(info), host=args.host, port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
