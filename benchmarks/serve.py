"""Serving throughput and latency on loopback: a naive FastAPI app and the project's server per backend.

Everything serves one checkpoint (`--ckpt`, or the reference ResNet-152 with random weights) with the same
pre-processing, to `--requests` POSTs of real Kermany JPEGs at each `--concurrency`:
  baseline          benchmarks/baseline_server.py: one request, one eager torch fp32 forward, no batching
  torch             src/serve.py on the checkpoint (dynamic batching; `--precision` fp32 | bf16)
  onnxruntime-fp32  src/serve.py backend=onnxruntime on the file src/export.py's code writes
  onnxruntime-int8  the same on its static int8 copy, calibrated on `--calibration` training images
Per backend also: the offline batched predictor (decode + pre-process + the same model in batches, no HTTP)
and the server's RSS before and after. `--sweep-batching 8:5 16:10 ...` first loads the first backend at the
top concurrency once per max_batch_size:max_wait_ms pair, to choose the batching settings by measurement.

    python benchmarks/serve.py --requests 300
    python benchmarks/serve.py --ckpt best.ckpt --backends onnxruntime-int8 --sweep-batching 8:5 16:5
"""

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
from common import ROOT, emit, kermany_sample, machine, reference_checkpoint

from pneumonia_cam.inference.backends import BACKENDS
from pneumonia_cam.inference.batch import predict_paths
from pneumonia_cam.inference.export import export_onnx, quantize_int8
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.runtime.onnx import OnnxModel

READY_TIMEOUT_S = 300
# what each served variant runs: (src/serve.py backend, which file)
VARIANTS = {
    "torch": ("torch", "ckpt"),
    "onnxruntime-fp32": ("onnxruntime", "fp32"),
    "onnxruntime-int8": ("onnxruntime", "int8"),
}


def free_port() -> int:
    """A port nobody listens on right now (loopback only)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen) -> None:
    """Poll until the server answers 200 (the project's /ready; the baseline's /docs)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {READY_TIMEOUT_S} s")


def load(base: str, images: list[bytes], n: int, concurrency: int) -> dict:
    """n POSTs of the images (cycled) from `concurrency` client threads; latency, throughput, errors."""
    latencies, statuses, probabilities, precisions = [], [], {}, set()

    def one(i: int, client: httpx.Client) -> None:
        start = time.perf_counter()
        response = client.post(f"{base}/v1/predict", files={"file": ("x.jpeg", images[i % len(images)])})
        latencies.append(time.perf_counter() - start)
        statuses.append(response.status_code)
        if response.status_code == 200:
            body = response.json()
            precisions.add(body.get("precision", "fp32"))  # the baseline does not say: it runs fp32
            if i < len(images):
                probabilities[i] = body["probabilities"]["PNEUMONIA"]

    def worker(indices: range) -> None:
        with httpx.Client(timeout=120) as client:
            for i in indices:
                one(i, client)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, [range(k, n, concurrency) for k in range(concurrency)]))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": n,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "throughput_rps": round(n / wall, 2),
        "latency_ms_p50": round(float(np.percentile(ms, 50)), 1),
        "latency_ms_p95": round(float(np.percentile(ms, 95)), 1),
        "latency_ms_p99": round(float(np.percentile(ms, 99)), 1),
        "errors": sum(status != 200 for status in statuses),
        "5xx": sum(status >= 500 for status in statuses),
        "answered_precision": sorted(precisions),
        "probabilities": probabilities,
    }


def serve_and_load(
    command: list[str], ready: str, base: str, images: list[bytes], requests: int, concurrency: list[int]
) -> dict:
    """Start a server, load it at each concurrency, record its RSS before and after, stop it."""
    log = tempfile.NamedTemporaryFile(prefix="server_", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready(ready, process)
        except (RuntimeError, TimeoutError):
            print(Path(log.name).read_text()[-4000:], file=sys.stderr)
            raise
        # warm-up at the highest concurrency, so the allocator has seen the largest batches before RSS is read
        load(base, images, 4 * max(concurrency), max(concurrency))
        rss = psutil.Process(process.pid)
        before = rss.memory_info().rss
        runs = {}
        for clients in concurrency:
            start_rss = rss.memory_info().rss
            runs[f"c{clients}"] = load(base, images, requests, clients)
            runs[f"c{clients}"]["rss_growth_mb"] = round((rss.memory_info().rss - start_rss) / 2**20, 1)
        after = rss.memory_info().rss
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    runs["rss_mb_before"] = round(before / 2**20, 1)
    runs["rss_mb_after"] = round(after / 2**20, 1)
    runs["rss_growth_mb"] = round((after - before) / 2**20, 1)
    return runs


def offline(model: InferenceModel, paths: list[Path], batch_size: int, repeats: int) -> dict:
    """The batched predictor without HTTP: decode + pre-process + the model, img/s."""
    list(predict_paths(model, paths[:batch_size], batch_size))  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        results = list(predict_paths(model, paths, batch_size))
    wall = time.perf_counter() - start
    return {
        "images_per_s": round(repeats * len(paths) / wall, 2),
        "errors": sum(r.error is not None for r in results),
    }


def model_files(ckpt: Path, work: Path, calibration: int, method: str, keep_fp32: tuple[str, ...]) -> dict:
    """The checkpoint, its ONNX export and the export's int8 copy (calibrated on training images)."""
    fp32 = export_onnx(InferenceModel.from_checkpoint(ckpt), work / "model.onnx")
    exported = OnnxModel(fp32)
    inputs = np.stack([exported.prepare(path)[0] for path, _ in kermany_sample(calibration, "train")])
    return {
        "ckpt": ckpt,
        "fp32": fp32,
        "int8": quantize_int8(exported, inputs, work / "model.int8.onnx", method, keep_fp32),
    }


def server_command(path: Path, backend: str, port: int, work: Path, args, batching: str) -> list[str]:
    """src/serve.py on `path` through `backend`, with max_batch_size:max_wait_ms `batching`, on loopback."""
    size, wait = batching.split(":")
    command = [sys.executable, "src/serve.py", f"ckpt_path={path}", f"backend={backend}", f"port={port}"]
    command += ["host=127.0.0.1", f"device={args.device}", f"hydra.run.dir={work / 'run'}"]
    command += [f"batching.max_batch_size={size}", f"batching.max_wait_ms={wait}", "batching.max_queue=256"]
    command += ["extras.print_config=false"]
    if backend == "torch":
        command.append(f"precision={args.precision}")
    return command


def served(
    path: Path, backend: str, work: Path, images: list[bytes], args, batching: str, concurrency
) -> dict:
    """The project's server on one file: its loads at each concurrency."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = server_command(path, backend, port, work, args, batching)
    return serve_and_load(command, f"{base}/ready", base, images, args.requests, concurrency)


def prob_diff(a: dict, b: dict) -> float | None:
    """Largest |P(PNEUMONIA)| difference over the images both runs answered."""
    shared = sorted(set(a) & set(b))
    return round(max(abs(a[i] - b[i]) for i in shared), 6) if shared else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ckpt", default=None, help="a trained checkpoint (default: reference, random weights)"
    )
    parser.add_argument("--backends", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--images", type=int, default=64, help="distinct real test images, cycled")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the torch backend's")
    parser.add_argument(
        "--batching", default="16:5", help="max_batch_size:max_wait_ms of the project's server"
    )
    parser.add_argument("--sweep-batching", nargs="*", default=[], help="max_batch_size:max_wait_ms pairs")
    parser.add_argument("--calibration", type=int, default=64, help="training images calibrating int8")
    parser.add_argument("--calibration-method", default="minmax")
    parser.add_argument("--keep-fp32", nargs="*", default=[], help="op types the int8 copy leaves in fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="resnet152")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    ckpt = Path(args.ckpt) if args.ckpt else reference_checkpoint(work / "reference.ckpt", args.backbone)
    files = model_files(ckpt, work, args.calibration, args.calibration_method, tuple(args.keep_fp32))
    paths = [path for path, _ in kermany_sample(args.images, "test")]
    images = [path.read_bytes() for path in paths]
    top = max(args.concurrency)
    result = {"benchmark": "serve", "settings": vars(args), "machine": machine(), "checkpoint": str(ckpt)}

    if args.sweep_batching:
        backend, file = VARIANTS[args.backends[0]]
        result["batching_sweep"] = {
            "variant": args.backends[0],
            "concurrency": top,
            "runs": {
                pair: served(files[file], backend, work, images, args, pair, [top])[f"c{top}"]
                for pair in args.sweep_batching
            },
        }
        for run in result["batching_sweep"]["runs"].values():
            run.pop("probabilities")

    if not args.skip_baseline:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = [sys.executable, "benchmarks/baseline_server.py", str(ckpt), str(port), args.device]
        result["baseline"] = serve_and_load(
            command, f"{base}/docs", base, images, args.requests, args.concurrency
        )

    result["variants"] = {}
    for variant in args.backends:
        backend, file = VARIANTS[variant]
        runs = served(files[file], backend, work, images, args, args.batching, args.concurrency)
        model = BACKENDS[backend].from_checkpoint(files[file], operating_point="default")
        if backend == "torch":
            model.configure(args.precision)
        batch_size = int(args.batching.split(":")[0])
        entry = {"server": runs, "offline_batched_predictor": offline(model, paths, batch_size, 2)}
        entry["fraction_of_offline"] = round(
            runs[f"c{top}"]["throughput_rps"] / entry["offline_batched_predictor"]["images_per_s"], 3
        )
        if "baseline" in result:
            baseline = result["baseline"]
            entry["speedup_vs_baseline"] = {
                f"c{c}": round(runs[f"c{c}"]["throughput_rps"] / baseline[f"c{c}"]["throughput_rps"], 2)
                for c in args.concurrency
            }
            entry["p95_c1_ms_vs_baseline"] = (
                [runs["c1"]["latency_ms_p95"], baseline["c1"]["latency_ms_p95"]] if "c1" in runs else None
            )
            entry["max_abs_prob_diff_vs_baseline"] = prob_diff(
                runs[f"c{top}"]["probabilities"], baseline[f"c{top}"]["probabilities"]
            )
        result["variants"][variant] = entry
    servers = [result.get("baseline", {}), *(entry["server"] for entry in result["variants"].values())]
    for run in (run for server in servers for run in server.values()):
        if isinstance(run, dict):
            run.pop("probabilities", None)
    emit(result, args.out)


if __name__ == "__main__":
    main()
