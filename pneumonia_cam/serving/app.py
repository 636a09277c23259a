"""The REST server: one InferenceModel behind FastAPI, with dynamic batching, limits, auth and request ids.

app = create_app(cfg)            # cfg: configs/serve.yaml; the model loads in the lifespan
uvicorn.run(app, host=cfg.host, port=cfg.port)
"""

import asyncio
import base64
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from omegaconf import DictConfig, OmegaConf
from starlette.concurrency import run_in_threadpool

from pneumonia_cam.inference.backends import load_model
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.serving import schemas
from pneumonia_cam.serving.batcher import DynamicBatcher, QueueFull
from pneumonia_cam.serving.context import RequestIdMiddleware, install_request_id_logging, request_id_var
from pneumonia_cam.serving.engine import (
    CamKey,
    Decoded,
    InferenceEngine,
    Inferred,
    InputError,
    Limits,
    png_base64,
)
from pneumonia_cam.serving.limits import ApiKeyMiddleware, BodySizeLimitMiddleware

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
API_KEY_ENV = "SERVE_API_KEY"
RETRY_AFTER_S = "1"
ERRORS = {
    code: {"model": schemas.ErrorDetail, "description": text}
    for code, text in {
        401: "Missing or wrong API key (when SERVE_API_KEY is set)",
        413: "Body over limits.max_body_bytes, or more files than limits.max_files",
        415: "Not a PNG, JPEG or DICOM file (by magic bytes)",
        422: "Undecodable, empty, oversized (header), colour or multi-frame DICOM, or a bad parameter",
        503: "Model not ready yet, or the queue is full (see Retry-After)",
    }.items()
}


class CamMethod(StrEnum):
    """CAM methods the server offers."""

    cam = "cam"
    gradcam = "gradcam"


class ModelServer:
    """Setup (load + warm-up), and per request: decode -> batched predict -> encode, through one model."""

    def __init__(self, cfg: DictConfig, model: InferenceModel | None = None) -> None:
        self.cfg = cfg
        self.model = model
        self.limits = Limits.from_config(cfg.limits)
        self.engine: InferenceEngine | None = None
        self.batcher: DynamicBatcher | None = None
        self.ready = threading.Event()
        self.load_error: str | None = None

    def setup(self) -> None:
        """Load the weights (unless given), start the batcher, run one warm-up inference (off the loop)."""
        try:
            if self.model is None:
                self.model = load_model(self.cfg)
            self.model.to(self.cfg.get("device", "cpu"))
            self.model.check_cam(CamMethod.cam.value, self.cfg.cam.target_layer)
            self.engine = InferenceEngine(self.model, self.cfg.cam, self.limits)
            batching = self.cfg.batching
            self.batcher = DynamicBatcher(
                self.engine.predict, batching.max_batch_size, batching.max_wait_ms, batching.max_queue
            )
            size = self.model.info.image_size if self.model.info else 224
            warm = self.model.prepare(np.zeros((size, size), dtype=np.uint8))
            self.batcher.submit_nowait(None, warm).result(timeout=600)
        except Exception as error:  # reported by /ready (and logged); the process stays up for diagnosis
            self.load_error = f"{type(error).__name__}: {error}"
            log.exception("Model setup failed")
            return
        self.ready.set()
        log.info("Model ready: %s", self.model.info.as_dict() if self.model.info else "no checkpoint info")

    def close(self) -> None:
        """Stop the batch worker."""
        if self.batcher is not None:
            self.batcher.close()

    def check_target(self, target_class: int | None) -> int | None:
        """A target class index that exists, or a 422."""
        if target_class is not None and target_class >= len(self.model.class_names):
            raise HTTPException(
                422, f"target_class {target_class} is not an index into {list(self.model.class_names)}"
            )
        return target_class

    def cam_key(self, method: str, target_class: int | None) -> CamKey:
        """A request's CAM settings, or a 422 for a method this model cannot compute."""
        try:
            self.model.check_cam(method, self.cfg.cam.target_layer)
        except ValueError as error:
            raise HTTPException(422, str(error)) from error
        return CamKey(method, self.check_target(target_class))

    async def run(self, data: bytes, key: CamKey | None, original: bool) -> dict[str, Any]:
        """Decode in a thread, predict in the batcher, encode in a thread: one image's JSON answer."""
        start = time.perf_counter()
        decoded = await run_in_threadpool(self.engine.decode, data)
        try:
            outcome = await self.batcher.submit(key, decoded.prepared)
        except QueueFull as error:
            raise InputError(503, f"Server busy: {error}; retry later") from error
        body = await run_in_threadpool(self.encode, decoded, outcome.value, key, original)
        body["timing_ms"] = {
            "decode": decoded.decode_ms,
            "queue": outcome.queue_ms,
            "inference": outcome.inference_ms,
            "total": (time.perf_counter() - start) * 1000.0,
        }
        log.info(
            "%s %dx%d (%d bytes) -> %s P(%s)=%.4f, batch of %d, %.1f ms",
            decoded.header.format,
            decoded.header.width,
            decoded.header.height,
            decoded.nbytes,
            body["label"],
            body["positive_class"],
            body["probabilities"][body["positive_class"]],
            outcome.batch_size,
            body["timing_ms"]["total"],
        )
        return body

    def encode(
        self, decoded: Decoded, result: Inferred, key: CamKey | None, original: bool
    ) -> dict[str, Any]:
        """The JSON fields of one answer (PNG encoding included)."""
        model, header = self.model, decoded.header
        point = model.operating_point
        body: dict[str, Any] = {
            "request_id": request_id_var.get(),
            "label": model.class_names[result.label],
            "probabilities": {
                name: float(p) for name, p in zip(model.class_names, result.probs, strict=True)
            },
            "threshold": point.threshold,
            "temperature": point.temperature,
            "positive_class": model.positive_name,
            "model": {k: v for k, v in model.info.as_dict().items() if k != "checkpoint"},
            "backend": model.backend,
            "precision": model.precision,
            "input": {
                "format": header.format,
                "width": header.width,
                "height": header.height,
                "bytes": decoded.nbytes,
                "photometric_interpretation": header.photometric_interpretation,
                "transfer_syntax": header.transfer_syntax,
                "transfer_syntax_name": header.transfer_syntax_name,
            },
            "cam": None,
            "original_png": png_base64(decoded.prepared.original) if original else None,
        }
        if key is not None:
            overlay, heatmap = self.engine.encode_cam(decoded.prepared.original, result.cam_map)
            body["cam"] = {
                "method": key.method,
                "target_class": model.class_names[result.cam_target],
                "overlay_png": overlay,
                "heatmap_png": heatmap,
                "grid": result.grid.tolist(),
                "grid_shape": list(result.grid.shape),
            }
        return body

    def describe(self) -> dict[str, Any]:
        """The /v1/model answer."""
        cam = self.cfg.cam
        return {
            "class_names": list(self.model.class_names),
            "operating_point": self.model.operating_point.as_dict(),
            "model": self.model.info.as_dict(),
            "backend": self.model.backend,
            "precision": self.model.precision,
            "compile": bool(self.cfg.get("compile", False)),
            "device": str(self.model.device),
            "tta": self.model.tta,
            "batching": {
                "max_batch_size": self.batcher.max_batch_size,
                "max_wait_ms": self.batcher.max_wait * 1000.0,
                "max_queue": self.batcher.max_queue,
                **self.batcher.stats(),
            },
            "limits": OmegaConf.to_container(self.cfg.limits),
            "cam": {k: cam[k] for k in ("method", "target_layer", "upsample_mode", "alpha", "colormap")},
        }


def _server(request: Request) -> ModelServer:
    """The app's ModelServer."""
    return request.app.state.server


def require_ready(request: Request) -> ModelServer:
    """The server, once it can answer; 503 with Retry-After while the model loads."""
    server = _server(request)
    if not server.ready.is_set():
        raise HTTPException(503, "Model not ready yet", headers={"Retry-After": RETRY_AFTER_S})
    return server


Ready = Annotated[ModelServer, Depends(require_ready)]
TargetClass = Annotated[int | None, Query(ge=0, description="Index into class_names; default: the decision")]
Method = Annotated[CamMethod, Query(description="CAM method")]


def _raise_http(error: InputError) -> HTTPException:
    """An InputError as the HTTP error FastAPI answers (503s tell the client when to retry)."""
    headers = {"Retry-After": RETRY_AFTER_S} if error.status == 503 else None
    return HTTPException(error.status, error.detail, headers=headers)


def create_app(cfg: DictConfig, model: InferenceModel | None = None) -> FastAPI:
    """The FastAPI app for a serve config; `model` skips loading (tests, notebooks) but is still warmed up."""
    server = ModelServer(cfg, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Load and warm up off the event loop, so /health answers (and /ready says 503) meanwhile."""
        install_request_id_logging(logging.getLogger("pneumonia_cam"), logging.getLogger("uvicorn.access"))
        threading.Thread(target=server.setup, name="model-setup", daemon=True).start()
        yield
        server.close()

    app = FastAPI(
        title="pneumonia-cam",
        summary="Pneumonia vs normal chest X-ray classification with class activation maps",
        version="1",
        lifespan=lifespan,
    )
    app.state.server = server
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=server.limits.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, env=API_KEY_ENV)  # before the size limit: no body read for a 401
    app.add_middleware(RequestIdMiddleware)  # outermost: even a 413 carries the request id

    @app.get("/health", response_model=schemas.Health, tags=["ops"])
    async def health() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/ready",
        response_model=schemas.Readiness,
        responses={503: {"model": schemas.Readiness}},
        tags=["ops"],
    )
    async def ready(response: Response) -> dict:
        """Readiness: 200 once the weights are loaded and one warm-up inference has run, else 503."""
        if server.ready.is_set():
            return {"status": "ready"}
        response.status_code = 503
        response.headers["Retry-After"] = RETRY_AFTER_S
        if server.load_error:
            return {"status": "failed", "detail": server.load_error}
        return {"status": "loading"}

    v1 = [Depends(HTTPBearer(auto_error=False, description=f"needed when {API_KEY_ENV} is set"))]

    @app.get(
        "/v1/model", response_model=schemas.ModelDescription, responses=ERRORS, dependencies=v1, tags=["v1"]
    )
    async def model_description(server: Ready) -> dict:
        """Class names, operating point (and where it was chosen), checkpoint, precision, batching, limits."""
        return server.describe()

    @app.post(
        "/v1/predict", response_model=schemas.Prediction, responses=ERRORS, dependencies=v1, tags=["v1"]
    )
    async def predict(
        server: Ready,
        file: Annotated[UploadFile, File(description="PNG, JPEG or DICOM")],
        cam: bool = False,
        method: Method = CamMethod.cam,
        target_class: TargetClass = None,
        original: bool = False,
    ) -> dict:
        """Label and probabilities for one image; with cam=true its class activation map as PNGs and grid."""
        target = server.check_target(target_class)
        key = server.cam_key(method.value, target) if cam else None
        try:
            return await server.run(await file.read(), key, original)
        except InputError as error:
            raise _raise_http(error) from error

    @app.post(
        "/v1/explain",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "The overlay PNG"}, **ERRORS},
        dependencies=v1,
        tags=["v1"],
    )
    async def explain(
        server: Ready,
        file: Annotated[UploadFile, File(description="PNG, JPEG or DICOM")],
        method: Method = CamMethod.cam,
        target_class: TargetClass = None,
    ) -> Response:
        """The CAM overlay at the original resolution as a PNG; label and P(positive) in headers."""
        key = server.cam_key(method.value, target_class)
        try:
            body = await server.run(await file.read(), key, original=False)
        except InputError as error:
            raise _raise_http(error) from error
        return Response(
            base64.b64decode(body["cam"]["overlay_png"]),
            media_type="image/png",
            headers={
                "X-Label": body["label"],
                "X-Probability-Positive": repr(body["probabilities"][body["positive_class"]]),
            },
        )

    @app.post(
        "/v1/predict/batch",
        response_model=schemas.BatchResponse,
        responses=ERRORS,
        dependencies=v1,
        tags=["v1"],
    )
    async def predict_batch(
        server: Ready,
        files: Annotated[list[UploadFile], File(description="PNG, JPEG or DICOM files")],
        cam: bool = False,
        method: Method = CamMethod.cam,
        target_class: TargetClass = None,
        original: bool = False,
    ) -> dict:
        """One result per file, in order; a bad file gets its own error and never fails the others."""
        if len(files) > server.limits.max_files:
            raise HTTPException(413, f"{len(files)} files; at most {server.limits.max_files} per request")
        key = server.cam_key(method.value, target_class) if cam else None

        async def one(index: int, upload: UploadFile) -> dict:
            try:
                return {"index": index, "ok": True, **await server.run(await upload.read(), key, original)}
            except InputError as error:
                return {
                    "index": index,
                    "ok": False,
                    "error": {"status": error.status, "detail": error.detail},
                }

        results = await asyncio.gather(*(one(i, f) for i, f in enumerate(files)))
        return {"request_id": request_id_var.get(), "results": results}

    @app.get("/", include_in_schema=False)
    async def viewer() -> FileResponse:
        """The browser viewer."""
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
