"""Response models of the REST API, so /docs and /openapi.json describe every answer."""

from typing import Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    """Every 4xx/5xx answer: why the request was refused."""

    detail: str


class ModelRef(BaseModel):
    """Which weights answered."""

    checkpoint_sha256: str
    backbone: str
    image_size: int
    input_family: str = Field(
        description="pre-processing family of the weights the backbone started from: imagenet | xrv | "
        "tflite | inception (channels and normalisation follow it)"
    )


class InputFacts(BaseModel):
    """What the upload was, read from its header (never its file name)."""

    format: Literal["png", "jpeg", "dicom"]
    width: int
    height: int
    bytes: int
    photometric_interpretation: str | None = None
    transfer_syntax: str | None = Field(None, description="DICOM transfer syntax UID")
    transfer_syntax_name: str | None = None


class Timing(BaseModel):
    """Milliseconds spent decoding, queued for a batch, in the batch's model call, and in all."""

    decode: float
    queue: float
    inference: float
    total: float


class CamOutput(BaseModel):
    """The class activation map of one image."""

    method: Literal["cam", "gradcam"]
    target_class: str = Field(description="The class the map explains")
    overlay_png: str = Field(description="Base64 PNG: the map blended over the grey original, original size")
    heatmap_png: str = Field(
        description="Base64 RGBA PNG, original size: the colour-mapped map; alpha = the configured opacity"
    )
    grid: list[list[float]] = Field(
        description="The raw h x w activation grid, before upsampling/normalising"
    )
    grid_shape: list[int]


class Prediction(BaseModel):
    """The model's answer for one image, decided by the model's own operating point."""

    request_id: str
    label: str
    probabilities: dict[str, float]
    threshold: float
    temperature: float
    positive_class: str
    model: ModelRef
    backend: Literal["torch", "onnxruntime"] = Field(description="What ran the network for this answer")
    precision: Literal["fp32", "bf16", "int8"] = Field(
        description="The precision that answered: fp32 | bf16 (torch), fp32 | int8 (an int8 ONNX copy)"
    )
    input: InputFacts
    timing_ms: Timing
    cam: CamOutput | None = None
    original_png: str | None = Field(None, description="Base64 PNG of the decoded grey original")


class BatchSuccess(Prediction):
    """One file of a batch that was read and predicted."""

    index: int
    ok: Literal[True] = True


class ItemError(BaseModel):
    """Why one file of a batch failed: the status a single request would have had."""

    status: int
    detail: str


class BatchFailure(BaseModel):
    """One file of a batch that was refused; the others are unaffected."""

    index: int
    ok: Literal[False] = False
    error: ItemError


class BatchResponse(BaseModel):
    """One result per uploaded file, in upload order."""

    request_id: str
    results: list[BatchSuccess | BatchFailure]


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: weights loaded and one warm-up inference run."""

    status: Literal["ready", "loading", "failed"]
    detail: str | None = None


class OperatingPointOut(BaseModel):
    """Threshold, temperature and positive class, and where they were chosen."""

    threshold: float
    temperature: float
    positive_class: int
    method: str
    chosen_on: str
    source: str


class ModelInfoOut(ModelRef):
    """The checkpoint behind the model."""

    checkpoint: str


class BatchingOut(BaseModel):
    """Dynamic batching settings and what it has done so far."""

    max_batch_size: int
    max_wait_ms: float
    max_queue: int
    queued: int
    batches_run: int
    batch_sizes: dict[int, int] = Field(description="Histogram: items per model call -> number of calls")


class LimitsOut(BaseModel):
    """What the server accepts."""

    max_body_bytes: int
    max_pixels: int
    max_side: int
    max_files: int


class TTAOut(BaseModel):
    """Test-time augmentation: every answer (probabilities, CAM, operating point) is of these views merged."""

    views: list[str] = Field(description="identity alone: no TTA; e.g. rotate:8, zoom:1.08, hflip")
    merge: Literal["probability", "logit"]


class CamSettings(BaseModel):
    """How CAMs are computed and drawn."""

    method: str
    target_layer: str | None
    upsample_mode: str
    alpha: float
    colormap: str


class ModelDescription(BaseModel):
    """Everything a client needs to interpret answers."""

    class_names: list[str]
    operating_point: OperatingPointOut
    model: ModelInfoOut
    backend: Literal["torch", "onnxruntime"]
    precision: str
    compile: bool
    device: str
    tta: TTAOut
    batching: BatchingOut
    limits: LimitsOut
    cam: CamSettings
