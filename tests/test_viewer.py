"""The CAM viewer in a real headless browser, against the real server.

Starts `src/serve.py` on a free port with the smoke checkpoint, opens `/` in Debian's chromium through
Playwright, uploads a real Kermany test image through the file chooser and checks what the page RENDERED
against the Python API (`InferenceModel`) for the same image: the label, P(positive) to the shown
precision, the heat-map layer at the original's resolution, the opacity slider, the cam/gradcam switch,
and the server's own 415 message for a text file named `.png`. No browser download: the test skips, and
says why, where `/usr/bin/chromium` or the playwright package is missing.

`UPDATE_SCREENSHOT=1` also writes docs/serve_viewer.png (the README shows it).
"""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import KERMANY, ROOT
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "serve_viewer.png"
# the waits bound the test (about a minute at worst once the shared smoke checkpoint exists; ~15 s here)
READY_TIMEOUT_S = 30  # server start: imports, checkpoint load, warm-up
UI_TIMEOUT_MS = 10_000  # one request and its render
BAD_UPLOAD = b"This is a text file, not an X-ray.\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no server output)"


def _wait_ready(base: str, server: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll GET /ready until 200; fail with the server's output if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"serve.py exited with {server.returncode} before /ready\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet, or 503 while the model loads
        time.sleep(0.25)
    pytest.fail(f"/ready did not answer 200 within {timeout_s} s\n{_log_tail(log)}")


def _stop(server: subprocess.Popen) -> None:
    """Terminate the server this test started; kill it if it does not exit in time."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def _api_answer(ckpt: Path, image: Path) -> tuple[str, float, str, str]:
    """(label, P(positive), positive class name, checkpoint SHA-256) from the Python API."""
    from pneumonia_cam.inference.model import InferenceModel

    model = InferenceModel.from_checkpoint(ckpt)
    label, confidence = model.predict(image)
    probs = model.predict_proba(model.prepare(image).tensor[None])[0]
    p_positive = float(probs[model.operating_point.positive_class])
    if label == model.positive_name:
        assert confidence == pytest.approx(p_positive, abs=1e-6)
    return label, p_positive, model.positive_name, model.info.checkpoint_sha256


@pytest.mark.slow
@pytest.mark.real_data
def test_viewer_renders_the_servers_answer_in_a_real_browser(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does) to run the browser test"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing: `.venv/bin/pip install playwright==1.65.2`")
    if not KERMANY.exists():
        pytest.skip(f"{KERMANY} is absent (real_data)")
    image = sorted((KERMANY / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    ckpt = request.getfixturevalue("smoke_checkpoint")  # only trained once the skips above passed

    api_label, api_p_positive, positive_name, sha256 = _api_answer(ckpt, image)
    with Image.open(image) as original:
        width, height = original.size

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    env.pop("WANDB_API_KEY", None)
    env.pop("SERVE_API_KEY", None)
    command = [
        sys.executable,
        "src/serve.py",
        f"ckpt_path={ckpt}",
        f"port={port}",
        "host=127.0.0.1",
        f"hydra.run.dir={tmp_path / 'serve_run'}",
        "extras.print_config=false",
    ]
    with log.open("wb") as log_file:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_ready(base, server, log, READY_TIMEOUT_S)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(UI_TIMEOUT_MS)
                page_errors: list[str] = []
                requested: list[str] = []
                page.on("pageerror", lambda error: page_errors.append(str(error)))
                page.on("request", lambda req: requested.append(req.url))

                page.goto(f"{base}/")
                # model facts come from GET /v1/model
                page.wait_for_selector("#model-facts dt:has-text('Backbone')")
                facts = page.inner_text("#model-facts")
                assert "resnet10" in facts
                assert sha256[:12] in facts
                assert "research use only" in page.inner_text("body").lower()

                # upload a real image through the file chooser
                page.set_input_files("#file-input", str(image))
                page.wait_for_function("document.body.dataset.result === 'cam'")
                assert page.inner_text("#label").strip() == api_label
                shown = page.inner_text("#probability").strip()
                decimals = len(shown.split(".")[1]) if "." in shown else 0
                assert float(shown) == pytest.approx(api_p_positive, abs=0.5 * 10**-decimals + 1e-9), shown
                assert positive_name in page.inner_text("#probability-caption")
                assert re.fullmatch(r"\d\.\d+", page.inner_text("#threshold").strip())

                sizes = page.evaluate(
                    """() => ['original', 'overlay'].map(id => {
                        const img = document.getElementById(id);
                        return [img.complete, img.naturalWidth, img.naturalHeight];
                    })"""
                )
                assert sizes == [[True, width, height], [True, width, height]]

                # the opacity slider drives the heat-map layer's computed opacity
                def overlay_opacity() -> float:
                    return float(page.eval_on_selector("#overlay", "img => getComputedStyle(img).opacity"))

                page.fill("#opacity", "25")
                assert overlay_opacity() == pytest.approx(0.25)
                page.focus("#opacity")
                page.keyboard.press("End")
                assert overlay_opacity() == pytest.approx(1.0)
                page.fill("#opacity", "60")
                assert overlay_opacity() == pytest.approx(0.6)
                page.screenshot(path=str(tmp_path / "viewer_cam.png"))
                if os.environ.get("UPDATE_SCREENSHOT") == "1":
                    SCREENSHOT.parent.mkdir(exist_ok=True)
                    page.screenshot(path=str(SCREENSHOT))

                # switching the method asks the server again, with method=gradcam, and re-renders
                with page.expect_response(lambda r: "/v1/predict" in r.url) as answer:
                    page.select_option("#method", "gradcam")
                assert answer.value.status == 200
                assert "method=gradcam" in answer.value.url
                assert answer.value.json()["cam"]["method"] == "gradcam"
                page.wait_for_function("document.body.dataset.result === 'gradcam'")
                assert page.eval_on_selector("#overlay", "img => img.dataset.method") == "gradcam"
                assert page.eval_on_selector("#overlay", "img => img.naturalWidth") == width
                assert page.inner_text("#label").strip() == api_label
                assert overlay_opacity() == pytest.approx(0.6)  # the slider's setting survives a re-render
                page.screenshot(path=str(tmp_path / "viewer_gradcam.png"))

                # a text file named .png: the server's 415 and its detail, shown in the page
                with page.expect_response(lambda r: "/v1/predict" in r.url) as rejected:
                    page.set_input_files(
                        "#file-input",
                        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": BAD_UPLOAD}],
                    )
                assert rejected.value.status == 415
                detail = rejected.value.json()["detail"]
                page.wait_for_selector("#error:not([hidden])")
                error_text = page.inner_text("#error")
                assert "415" in error_text
                assert str(detail) in error_text
                assert page.inner_text("#label").strip() == "—"  # no stale answer next to the error
                page.screenshot(path=str(tmp_path / "viewer_error.png"))

                assert not page_errors, page_errors
                external = [url for url in requested if not url.startswith((base, "data:", "blob:"))]
                assert not external, f"the page must work offline; it requested {external}"
            finally:
                browser.close()
    finally:
        _stop(server)
