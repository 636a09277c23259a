"""The REST server (pneumonia_cam.serving) on the smoke checkpoint: contract, limits, batching, parity."""

import base64
import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import KERMANY, ROOT, SHARED_DATA, assert_ok, compose_config, run_entry_point, softened_copy
from hydra.core.global_hydra import GlobalHydra

from pneumonia_cam.data import preprocessor
from pneumonia_cam.data.image_io import (
    ImageReadError,
    UnsupportedFormatError,
    decode_grayscale,
    read_grayscale,
    read_header,
    sniff_format,
)
from pneumonia_cam.inference.export import export_onnx
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.cam import postprocess
from pneumonia_cam.serving.app import create_app
from pneumonia_cam.serving.limits import ApiKeyMiddleware, BodySizeLimitMiddleware
from pneumonia_cam.utils.overlay import overlay_cam
from pneumonia_cam.utils.run_config import checkpoint_sha256

DICOMS = SHARED_DATA / "dicom_samples"
MAX_BODY = 1 << 20  # the module app's body limit: 1 MiB
MAX_FILES = 4
CSV_ROUNDING = 5e-7  # predictions.csv writes probabilities to 6 decimals


def serve_config(ckpt: Path, *overrides: str):
    """configs/serve.yaml composed as `src/serve.py` would, for the smoke checkpoint."""
    cfg = compose_config("serve.yaml", [f"ckpt_path={ckpt}", "extras.print_config=false", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def backend_of(client: TestClient) -> str:
    """Which backend the server behind `client` runs."""
    return client.get("/v1/model").json()["backend"]


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    """Poll /ready until the lifespan's load and warm-up are done."""
    deadline = time.monotonic() + timeout
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.05)


def png_bytes(image: np.ndarray) -> bytes:
    """An array as PNG bytes."""
    return cv2.imencode(".png", image)[1].tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (valid signature and CRCs): decoding would allocate it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def dicom_bytes(samples: int = 1, pixel_data: bool = True, frames: int = 1, size: int = 48) -> bytes:
    """An uncompressed DICOM with a patient name and id (which must never reach a log)."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Secret^Patient", "PID-998877"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixel_data:
        pixels = np.random.default_rng(0).integers(0, 256, size * size * samples * frames, dtype=np.uint8)
        ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def synthetic_xray(height: int = 200, width: int = 300, seed: int = 0) -> np.ndarray:
    """A grey non-square image with a bright blob (what the smoke model learnt)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width), dtype=np.uint8)
    cv2.circle(image, (width // 3, height // 2), min(height, width) // 5, 230, -1)
    return image


def real_images(per_class: int = 3) -> list[Path]:
    """A few official Kermany test images of each class, or a skip without ../shared/data."""
    if not KERMANY.is_dir():
        pytest.skip("../shared/data is not available")
    return [
        p for c in ("NORMAL", "PNEUMONIA") for p in sorted((KERMANY / "test" / c).glob("*.jpeg"))[:per_class]
    ]


def real_dicoms() -> list[Path]:
    """The three real DICOMs, or a skip."""
    paths = sorted(DICOMS.glob("*.dcm"))
    if not paths:
        pytest.skip("../shared/data/dicom_samples is not available")
    return paths


def decode_png(b64: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """A base64 PNG from a response as an array."""
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), flags)


MULTIPART_HEAD = (
    b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n\x89PNG\r\n\x1a\n"
)
MULTIPART = {"content-type": "multipart/form-data; boundary=x"}


def streamed_upload(chunks: int, chunk_size: int) -> Iterator[bytes]:
    """A well-formed multipart upload in chunks, no Content-Length; only the size limit can stop it early."""
    yield MULTIPART_HEAD
    for _ in range(chunks):
        yield bytes(chunk_size)


def upload(data: bytes, name: str = "image.png") -> dict:
    """The multipart `file` field."""
    return {"file": (name, data, "application/octet-stream")}


@pytest.fixture(scope="module")
def model(smoke_checkpoint: Path) -> InferenceModel:
    """The reference: the Python API on the same checkpoint."""
    return InferenceModel.from_checkpoint(smoke_checkpoint)


@pytest.fixture(scope="module")
def smoke_onnx(smoke_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke checkpoint exported by src/export.py's code."""
    model = InferenceModel.from_checkpoint(smoke_checkpoint)
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "smoke.onnx")


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def client(request: pytest.FixtureRequest, smoke_checkpoint: Path) -> Iterator[TestClient]:
    """One server per backend, loading the file itself; a batch window long enough to fill.

    Every test that takes this fixture runs on both backends against the torch Python API.
    """
    path = smoke_checkpoint if request.param == "torch" else request.getfixturevalue("smoke_onnx")
    cfg = serve_config(
        path,
        f"backend={request.param}",
        "batching.max_wait_ms=50",
        f"limits.max_body_bytes={MAX_BODY}",
        f"limits.max_files={MAX_FILES}",
    )
    with TestClient(create_app(cfg)) as test_client:
        wait_ready(test_client)
        yield test_client


# ------------------------------------------------------------------ image_io: header first, then bytes


def test_sniff_and_headers_come_from_magic_bytes_not_names():
    """PNG/JPEG/DICOM are recognised by their signatures and sized from the header alone."""
    image = synthetic_xray(200, 300)
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))[1].tobytes()
    assert sniff_format(png_bytes(image)) == "png" and sniff_format(jpeg) == "jpeg"
    assert sniff_format(dicom_bytes()) == "dicom" and sniff_format(b"GIF89a....") is None
    assert (read_header(png_bytes(image)).width, read_header(png_bytes(image)).height) == (300, 200)
    header = read_header(jpeg)
    assert (header.format, header.width, header.height, header.samples_per_pixel) == ("jpeg", 300, 200, 3)
    header = read_header(png_claiming(20000, 20000))
    assert (header.width, header.height, header.pixels) == (20000, 20000, 400_000_000)
    header = read_header(dicom_bytes(samples=3, frames=2))
    assert (header.samples_per_pixel, header.frames, header.photometric_interpretation) == (3, 2, "RGB")
    assert (
        header.transfer_syntax == "1.2.840.10008.1.2.1"
        and header.transfer_syntax_name == "Explicit VR Little Endian"
    )
    with pytest.raises(UnsupportedFormatError):
        read_header(b"just some text, even if the file is called x.png")
    with pytest.raises(ImageReadError, match="empty"):
        read_header(b"")
    with pytest.raises(ImageReadError, match="no frame header"):
        read_header(jpeg[:20])
    with pytest.raises(ImageReadError, match="without PixelData"):
        read_header(dicom_bytes(pixel_data=False))


def test_decode_bytes_equals_read_grayscale_of_the_file(tmp_path):
    """Uploads and files share one decoder: identical arrays for PNG, colour JPEG and DICOM."""
    image = synthetic_xray()
    files = {
        "a.png": png_bytes(image),
        "b.jpeg": cv2.imencode(".jpg", cv2.merge([image, image // 2, image]))[1].tobytes(),
        "c.dcm": dicom_bytes(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(decode_grayscale(data), read_grayscale(tmp_path / name))
    for path in sorted(DICOMS.glob("*.dcm")):
        np.testing.assert_array_equal(decode_grayscale(path.read_bytes()), read_grayscale(path))


# ------------------------------------------------------------------ endpoints


def test_health_ready_model_docs_and_viewer(client, model, smoke_checkpoint):
    """Every GET endpoint answers with the facts of the loaded checkpoint."""
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    described = client.get("/v1/model").json()
    assert described["class_names"] == list(model.class_names)
    assert described["operating_point"] == model.operating_point.as_dict()
    assert described["operating_point"]["chosen_on"] == "config"
    assert described["model"]["checkpoint_sha256"] == checkpoint_sha256(smoke_checkpoint)
    assert described["model"]["image_size"] == model.info.image_size
    assert described["precision"] == "fp32" and described["device"] == "cpu"
    assert described["backend"] in {"torch", "onnxruntime"}
    assert described["model"]["backbone"] == model.info.backbone
    assert described["tta"] == {"views": ["identity"], "merge": "probability"}
    assert described["batching"]["max_batch_size"] == 16 and described["batching"]["max_wait_ms"] == 50
    assert described["batching"]["batches_run"] >= 1  # the warm-up
    assert described["limits"] == {
        "max_body_bytes": MAX_BODY,
        "max_pixels": 50_000_000,
        "max_side": 10000,
        "max_files": MAX_FILES,
    }
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/explain", "/v1/predict/batch", "/v1/model", "/health", "/ready"} <= set(
        schema["paths"]
    )
    assert "Prediction" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200
    index = client.get("/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert client.get("/static/index.html").text == index.text


def test_predict_synthetic_matches_python_api(client, model):
    """Probabilities and decision over HTTP are the Python API's, for PNG, JPEG and DICOM bytes."""
    image = synthetic_xray()
    for data in (png_bytes(image), png_bytes(255 - image), dicom_bytes()):
        body = client.post("/v1/predict", files=upload(data)).json()
        expected = model.predict_proba(model.prepare(decode_grayscale(data)).tensor[None])[0]
        got = [body["probabilities"][name] for name in model.class_names]
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6, rtol=0)
        assert body["label"] == model.predict(decode_grayscale(data))[0]
        assert (
            body["threshold"] == 0.5 and body["temperature"] == 1.0 and body["positive_class"] == "PNEUMONIA"
        )
        assert body["cam"] is None and body["original_png"] is None
        assert set(body["timing_ms"]) == {"decode", "queue", "inference", "total"}
        assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0


def test_tta_server_reports_its_views_and_answers_with_them(smoke_checkpoint, tmp_path):
    """`serve.py tta=xray` and its ONNX export: /v1/model names the views; /v1/predict answers with them."""
    ckpt = softened_copy(smoke_checkpoint, tmp_path / "soft.ckpt")
    cfg = serve_config(ckpt, "tta=xray")
    model = InferenceModel.from_config(cfg)
    plain = InferenceModel.from_checkpoint(ckpt)
    data = png_bytes(synthetic_xray())
    tensor = model.prepare(decode_grayscale(data)).tensor[None]
    expected = model.predict_proba(tensor)[0].numpy()
    assert abs(expected[1] - plain.predict_proba(tensor)[0, 1].item()) > 1e-4  # the views change the answer
    onnx = export_onnx(model, tmp_path / "tta.onnx")
    for path, backend in ((ckpt, "torch"), (onnx, "onnxruntime")):
        overrides = ("tta=xray",) if backend == "torch" else ()
        with TestClient(create_app(serve_config(path, f"backend={backend}", *overrides))) as served:
            wait_ready(served)
            assert served.get("/v1/model").json()["tta"] == {
                "views": list(cfg.tta.views),
                "merge": "probability",
            }
            body = served.post("/v1/predict", files=upload(data)).json()
        got = [body["probabilities"][name] for name in model.class_names]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.real_data
def test_predict_real_images_matches_python_api(client, model):
    """Real Kermany JPEGs and DICOMs: the same probabilities (atol 1e-6) and labels as InferenceModel."""
    for path in [*real_images(), *real_dicoms()]:
        body = client.post("/v1/predict", files=upload(path.read_bytes(), "whatever.bin")).json()
        expected = model.predict_proba(model.prepare(path).tensor[None])[0].numpy()
        np.testing.assert_allclose(
            [body["probabilities"][n] for n in model.class_names], expected, atol=1e-6, rtol=0
        )
        assert body["label"] == model.predict(path)[0]
        assert (body["input"]["width"], body["input"]["height"]) == read_grayscale(path).shape[::-1]


@pytest.mark.real_data
def test_dicom_input_facts_are_reported(client):
    """Photometric interpretation and transfer syntax come from each real DICOM's header."""
    seen = set()
    for path in real_dicoms():
        facts = client.post("/v1/predict", files=upload(path.read_bytes())).json()["input"]
        assert facts["format"] == "dicom" and facts["bytes"] == path.stat().st_size
        assert facts["transfer_syntax"] == "1.2.840.10008.1.2.4.50"
        assert facts["transfer_syntax_name"] == "JPEG Baseline (Process 1)"
        seen.add(facts["photometric_interpretation"])
    assert seen == {"MONOCHROME1", "MONOCHROME2"}


def test_cam_outputs_at_original_resolution(client, model):
    """Overlay, RGBA heat map, raw grid and original: sizes, values and consistency with the Python API."""
    image = synthetic_xray(200, 300)
    body = client.post("/v1/predict?cam=true&original=true", files=upload(png_bytes(image))).json()
    cam = body["cam"]
    assert cam["method"] == "cam" and cam["target_class"] == body["label"]
    grid = torch.tensor(cam["grid"])
    assert list(grid.shape) == cam["grid_shape"] and grid.shape[0] < 200 and grid.shape[1] < 300
    finished = postprocess(grid[None], (200, 300), "bilinear", relu=True, normalize=True)[0].numpy()
    # the grid is the map before upsampling: torch's own to 1e-4, the exported graph's to the ONNX parity 1e-3
    atol = 1e-4 if backend_of(client) == "torch" else 1e-3
    np.testing.assert_allclose(finished, model.generate_cam(image), atol=atol)
    overlay = decode_png(cam["overlay_png"])
    assert overlay.shape == (200, 300, 3)
    expected_overlay = overlay_cam(image, finished, 0.4, "jet")
    assert np.abs(overlay.astype(int) - expected_overlay).max() <= 1
    heat = decode_png(cam["heatmap_png"])
    assert heat.shape == (200, 300, 4) and (heat[..., 3] == round(0.4 * 255)).all()
    alpha = heat[..., 3:].astype(float) / 255
    stacked = heat[..., :3] * alpha + cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) * (1 - alpha)
    assert np.abs(stacked - expected_overlay).max() <= 2  # drawn over the original it is the overlay
    np.testing.assert_array_equal(decode_png(body["original_png"]), image)
    other = client.post("/v1/predict?cam=true&target_class=0", files=upload(png_bytes(image))).json()["cam"]
    assert other["target_class"] == "NORMAL" and not np.allclose(other["grid"], cam["grid"])
    gradcam = client.post("/v1/predict?cam=true&method=gradcam", files=upload(png_bytes(image)))
    if backend_of(client) == "onnxruntime":  # the exported graph holds the CAM only: a precise refusal
        assert gradcam.status_code == 422 and "needs backend=torch" in gradcam.json()["detail"]
        return
    assert gradcam.json()["cam"]["method"] == "gradcam"
    assert decode_png(gradcam.json()["cam"]["overlay_png"]).shape == (200, 300, 3)
    assert gradcam.json()["probabilities"] == pytest.approx(body["probabilities"], abs=1e-6)


def test_explain_returns_the_overlay_png(client, model):
    """image/png at the original size with label and P(positive) headers."""
    image = synthetic_xray(120, 90)
    method = "gradcam" if backend_of(client) == "torch" else "cam"
    response = client.post(f"/v1/explain?method={method}", files=upload(png_bytes(image)))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR).shape == (120, 90, 3)
    label, _ = model.predict(image)
    assert response.headers["X-Label"] == label
    p = float(model.predict_proba(model.prepare(image).tensor[None])[0, 1])
    assert float(response.headers["X-Probability-Positive"]) == pytest.approx(p, abs=1e-6)
    assert response.headers["X-Request-ID"]


def test_batch_with_bad_files_keeps_the_good_ones(client, model):
    """Each file gets its own result in order; bad ones carry the status a single request would get."""
    good = [synthetic_xray(seed=1), 255 - synthetic_xray(seed=2)]
    files = [
        ("files", ("a.png", png_bytes(good[0]))),
        ("files", ("b.png", b"plain text, not an image")),
        ("files", ("c.png", b"")),
        ("files", ("d.png", png_bytes(good[1]))),
    ]
    body = client.post("/v1/predict/batch", files=files).json()
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["ok"] for r in results] == [True, False, False, True]
    assert results[1]["error"]["status"] == 415 and results[2]["error"]["status"] == 422
    for result, image in zip((results[0], results[3]), good, strict=True):
        expected = model.predict_proba(model.prepare(image).tensor[None])[0].numpy()
        np.testing.assert_allclose(
            [result["probabilities"][n] for n in model.class_names], expected, atol=1e-6, rtol=0
        )
        assert result["label"] == model.predict(image)[0] and result["request_id"] == body["request_id"]
    too_many = [("files", (f"{i}.png", png_bytes(good[0]))) for i in range(MAX_FILES + 1)]
    response = client.post("/v1/predict/batch", files=too_many)
    assert response.status_code == 413 and str(MAX_FILES) in response.json()["detail"]


def test_concurrent_requests_are_batched(client, model):
    """8 simultaneous requests share model calls (a batch > 1 is recorded) and keep their own answers."""
    images = [synthetic_xray(seed=s) if s % 2 else 255 - synthetic_xray(seed=s) for s in range(8)]
    before = client.get("/v1/model").json()["batching"]["batch_sizes"]
    barrier = threading.Barrier(len(images))
    results: dict[int, dict] = {}

    def send(index: int) -> None:
        barrier.wait()
        results[index] = client.post("/v1/predict", files=upload(png_bytes(images[index]))).json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    after = client.get("/v1/model").json()["batching"]["batch_sizes"]
    grown = {int(size): n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert max(grown) > 1, grown
    assert sum(size * n for size, n in grown.items()) == len(images)
    expected = model.predict_proba(torch.stack([model.prepare(i).tensor for i in images]))
    for index, row in enumerate(expected):
        got = [results[index]["probabilities"][n] for n in model.class_names]
        np.testing.assert_allclose(got, row.numpy(), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ refusals: precise 4xx, server stays up


def _truncated_jpeg() -> bytes:
    """A real JPEG cut in half when ../shared/data is there, else an encoded synthetic one."""
    paths = sorted((KERMANY / "test" / "NORMAL").glob("*.jpeg"))[:1]
    data = paths[0].read_bytes() if paths else cv2.imencode(".jpg", synthetic_xray())[1].tobytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("make", "status", "detail"),
    [
        (lambda: b"this is text in a file named scan.png", 415, "magic bytes"),
        (lambda: b"", 422, "empty"),
        (_truncated_jpeg, 422, "cannot be decoded"),
        (lambda: png_claiming(20000, 20000), 422, "sides above 10000"),
        (lambda: png_claiming(9000, 9000), 422, "more than 50000000"),
        (lambda: dicom_bytes(pixel_data=False), 422, "without PixelData"),
        (lambda: dicom_bytes(samples=3), 422, "colour DICOM"),
        (lambda: dicom_bytes(frames=3), 422, "multi-frame"),
        (lambda: png_bytes(synthetic_xray())[:60], 422, "cannot be decoded"),
    ],
    ids=[
        "text",
        "zero-bytes",
        "truncated-jpeg",
        "20000px-png",
        "81-megapixel-png",
        "no-pixeldata",
        "colour-dicom",
        "multi-frame",
        "truncated-png",
    ],
)
def test_bad_inputs_get_precise_errors(client, monkeypatch, make, status, detail):
    """Each malformed upload gets its status and reason; oversized ones are refused before any decode."""
    if detail in {"sides above 10000", "more than 50000000"}:
        monkeypatch.setattr(
            preprocessor, "decode_grayscale", lambda *_: pytest.fail("decoded an oversized image")
        )
    response = client.post("/v1/predict", files=upload(make(), "scan.png"))
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert client.get("/health").status_code == 200


def test_bad_parameters_are_422(client):
    """An unknown CAM method or a class index that does not exist."""
    data = png_bytes(synthetic_xray())
    assert client.post("/v1/predict?cam=true&method=saliency", files=upload(data)).status_code == 422
    response = client.post("/v1/predict?cam=true&target_class=2", files=upload(data))
    assert response.status_code == 422 and "target_class 2" in response.json()["detail"]
    assert client.post("/v1/predict").status_code == 422  # no file


def test_oversize_body_with_and_without_content_length(client):
    """413 from the declared Content-Length, and from the streamed count when there is none."""
    big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_BODY)
    response = client.post("/v1/predict", files=upload(big))
    assert response.status_code == 413 and "Content-Length" in response.json()["detail"]
    assert response.headers["X-Request-ID"]
    response = client.post("/v1/predict", content=streamed_upload(64, 1 << 16), headers=MULTIPART)
    assert response.status_code == 413 and "while streaming" in response.json()["detail"]
    assert client.get("/health").status_code == 200


async def _drive(middleware, chunks: list[bytes], headers: list, path: str = "/") -> tuple[list, int]:
    """Feed body chunks to the middleware; return what it sent and how many chunks it asked for."""
    sent, asked = [], 0

    async def receive() -> dict:
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": chunks[asked - 1], "more_body": asked < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    await middleware({"type": "http", "headers": headers, "path": path}, receive, send)
    return sent, asked


def test_body_limit_stops_reading_as_soon_as_the_limit_is_passed():
    """The pure ASGI middleware: no more chunks are read after the one that passes the limit."""
    import asyncio

    async def app(scope, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = BodySizeLimitMiddleware(app, max_bytes=250)
    sent, asked = asyncio.run(_drive(middleware, [bytes(100)] * 10, []))
    assert sent[0]["status"] == 413 and asked == 3
    sent, asked = asyncio.run(_drive(middleware, [bytes(100)] * 2, []))
    assert sent[0]["status"] == 200 and asked == 2
    sent, asked = asyncio.run(_drive(middleware, [bytes(100)], [(b"content-length", b"251")]))
    assert sent[0]["status"] == 413 and asked == 0


def test_api_key_guards_v1_only(client, monkeypatch):
    """401 without or with a wrong key, 200 with it; ops, docs and the viewer stay open."""
    monkeypatch.setenv("SERVE_API_KEY", "s3cret-key")
    assert client.get("/v1/model").status_code == 401
    wrong = client.get("/v1/model", headers={"Authorization": "Bearer s3cret-kez"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert client.post("/v1/predict", files=upload(png_bytes(synthetic_xray()))).status_code == 401
    right = {"Authorization": "Bearer s3cret-key"}
    assert client.get("/v1/model", headers=right).status_code == 200
    assert (
        client.post("/v1/predict", files=upload(png_bytes(synthetic_xray())), headers=right).status_code
        == 200
    )
    for path in ("/health", "/ready", "/", "/static/index.html", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_api_key_is_checked_before_any_body_is_read(monkeypatch):
    """An upload without the key is answered 401 without reading one chunk; with it, the app reads it."""
    import asyncio

    async def app(scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    monkeypatch.setenv("SERVE_API_KEY", "s3cret-key")
    middleware = ApiKeyMiddleware(app, "SERVE_API_KEY")
    sent, asked = asyncio.run(_drive(middleware, [bytes(100)], [], "/v1/predict"))
    assert sent[0]["status"] == 401 and asked == 0
    assert json.loads(sent[1]["body"]) == {"detail": "Missing or wrong API key"}
    key = [(b"authorization", b"Bearer s3cret-key")]
    assert asyncio.run(_drive(middleware, [bytes(100)], key, "/v1/predict"))[0][0]["status"] == 200
    assert asyncio.run(_drive(middleware, [bytes(100)], [], "/health"))[0][0]["status"] == 200


def test_request_id_echoed_and_in_every_log_line(client, caplog):
    """A sane client id is echoed (header, body, logs), others replaced; names, patient tags never logged."""
    data = dicom_bytes()
    with caplog.at_level(logging.INFO, logger="pneumonia_cam"):
        response = client.post(
            "/v1/predict",
            files=upload(data, "Secret_Patient_scan.dcm"),
            headers={"X-Request-ID": "abc-123.X"},
        )
    assert response.headers["X-Request-ID"] == "abc-123.X" and response.json()["request_id"] == "abc-123.X"
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("pneumonia_cam.serving")]
    assert lines and all(line.startswith("[request abc-123.X]") for line in lines)
    assert "Secret" not in caplog.text and "PID-998877" not in caplog.text and "scan.dcm" not in caplog.text
    response = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(response.headers["X-Request-ID"]) == 32 and " " not in response.headers["X-Request-ID"]
    assert client.get("/health").headers["X-Request-ID"] != client.get("/health").headers["X-Request-ID"]


# ------------------------------------------------------------------ lifecycle and back-pressure


def test_ready_is_503_until_load_and_warm_up(smoke_checkpoint, monkeypatch):
    """While the weights load /health is up and /ready and /v1/* say 503; afterwards 200."""
    release = threading.Event()
    load = InferenceModel.from_config

    def blocked(cfg):
        assert release.wait(30)
        return load(cfg)

    monkeypatch.setattr(InferenceModel, "from_config", staticmethod(blocked))
    with TestClient(create_app(serve_config(smoke_checkpoint))) as test_client:
        assert test_client.get("/health").status_code == 200
        response = test_client.get("/ready")
        assert response.status_code == 503 and response.json()["status"] == "loading"
        busy = test_client.post("/v1/predict", files=upload(png_bytes(synthetic_xray())))
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        release.set()
        wait_ready(test_client)
        assert test_client.get("/v1/model").json()["batching"]["batch_sizes"] == {"1": 1}  # the warm-up ran


def test_full_queue_is_503_with_retry_after(smoke_checkpoint):
    """A slowed model and max_queue=1: extra requests are refused at once, never queued without bound."""
    slow = InferenceModel.from_checkpoint(smoke_checkpoint)
    predict_proba = slow.predict_proba

    def slowly(batch):
        time.sleep(0.3)
        return predict_proba(batch)

    slow.predict_proba = slowly
    cfg = serve_config(
        smoke_checkpoint, "batching.max_queue=1", "batching.max_batch_size=1", "batching.max_wait_ms=0"
    )
    with TestClient(create_app(cfg, model=slow)) as test_client:
        wait_ready(test_client)
        data = png_bytes(synthetic_xray())
        responses = []
        threads = [
            threading.Thread(
                target=lambda: responses.append(test_client.post("/v1/predict", files=upload(data)))
            )
            for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 503 in codes and set(codes) == {200, 503}, codes
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["Retry-After"] == "1" and "busy" in refused.json()["detail"]


# ------------------------------------------------------------------ parity with the CLI, and the real process


@pytest.mark.slow
@pytest.mark.real_data
def test_http_matches_predict_cli_csv(client, smoke_checkpoint, tmp_path):
    """src/predict.py's CSV and the server agree on every real image (probability and label)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    paths = [*real_images(), *real_dicoms()]
    for path in paths:
        (inputs / path.name).symlink_to(path)
    output = tmp_path / "predictions.csv"
    result = run_entry_point(
        "predict.py",
        [
            f"ckpt_path={smoke_checkpoint}",
            f"input={inputs}",
            f"output={output}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "extras.print_config=false",
        ],
    )
    assert_ok(result)
    table = pd.read_csv(output, keep_default_na=False).set_index(
        pd.read_csv(output)["path"].map(lambda p: Path(p).name)
    )
    assert len(table) == len(paths)
    for path in paths:
        body = client.post("/v1/predict", files=upload(path.read_bytes())).json()
        row = table.loc[path.name]
        assert body["label"] == row["prediction"]
        assert body["probabilities"][body["positive_class"]] == pytest.approx(
            float(row["probability"]), abs=1e-6
        )
        assert body["threshold"] == float(row["threshold"])


def _free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.real_data
def test_serve_script_answers_over_http(smoke_checkpoint, tmp_path):
    """`python src/serve.py` on a free port: /ready, one real image, a streamed oversize body, clean stop."""
    image = real_images(1)[0]
    port = _free_port()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "offline"}
    env.pop("SERVE_API_KEY", None)
    command = [
        sys.executable,
        str(ROOT / "src" / "serve.py"),
        f"ckpt_path={smoke_checkpoint}",
        f"port={port}",
        "limits.max_body_bytes=200000",
        f"hydra.run.dir={tmp_path / 'run'}",
        "extras.print_config=false",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "server not ready within 120 s"
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        response = httpx.post(f"{base}/v1/predict", files=upload(image.read_bytes()), timeout=30)
        assert response.status_code == 200 and response.json()["label"] in {"NORMAL", "PNEUMONIA"}
        assert response.headers["x-request-id"]
        response = httpx.post(  # 2 MiB streamed, no Content-Length, limit 200 kB
            f"{base}/v1/predict", content=streamed_upload(64, 1 << 15), timeout=30, headers=MULTIPART
        )
        assert response.status_code == 413
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
    assert "Model ready" in output and image.name not in output


def test_http_matches_eval_predictions(client, smoke_checkpoint, cfg_eval):
    """eval.py's predictions.csv and the server agree on the test images (probability and decision)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from src.eval import evaluate

    with open_dict(cfg_eval):
        cfg_eval.ckpt_path = str(smoke_checkpoint)
        cfg_eval.bootstrap.n_resamples = 20
    HydraConfig().set_config(cfg_eval)
    evaluate(cfg_eval)
    table = pd.read_csv(Path(cfg_eval.paths.output_dir) / "predictions.csv")
    assert len(table) == 24
    for _, row in table.iterrows():
        body = client.post("/v1/predict", files=upload(Path(row["path"]).read_bytes())).json()
        assert body["label"] == row["prediction_name"]
        # the CSV's rounding plus up to 1e-6 between eval's torch batch and the backend's
        assert body["probabilities"]["PNEUMONIA"] == pytest.approx(
            row["probability"], abs=CSV_ROUNDING + 1e-6
        )


def test_heap_growth_bound_applies_on_glibc():
    """serve.py sets glibc's arena cap and mmap threshold before any thread starts (a no-op elsewhere)."""
    import ctypes.util
    import platform

    from pneumonia_cam.serving.memory import bound_heap_growth

    if platform.system() != "Linux" or ctypes.util.find_library("c") is None:
        pytest.skip("glibc malloc only")
    assert bound_heap_growth(2, 1 << 20) is True
    assert bound_heap_growth(None, None) is False
    cfg = compose_config("serve.yaml", ["ckpt_path=x.ckpt"])
    assert (cfg.memory.malloc_arena_max, cfg.memory.mmap_threshold_bytes) == (2, 1 << 20)
