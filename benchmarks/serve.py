"""Serving throughput and latency on loopback: the project's server vs a quick FastAPI app, in one run.

Both serve the same reference ResNet-152 checkpoint (random weights) with the same pre-processing, to
`--requests` POSTs of real Kermany JPEGs at concurrency 1 and 16 each. Also measured: the offline batched
predictor (decode + pre-process + `InferenceModel` in batches, no HTTP) at the server's precision, and the
server's RSS before and after the requests.

    python benchmarks/serve.py --requests 1000 --precision bf16
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

from pneumonia_cam.inference.batch import predict_paths
from pneumonia_cam.inference.model import InferenceModel

READY_TIMEOUT_S = 300


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
    latencies, statuses, probabilities = [], [], {}

    def one(i: int, client: httpx.Client) -> None:
        start = time.perf_counter()
        response = client.post(f"{base}/v1/predict", files={"file": ("x.jpeg", images[i % len(images)])})
        latencies.append(time.perf_counter() - start)
        statuses.append(response.status_code)
        if response.status_code == 200 and i < len(images):
            probabilities[i] = response.json()["probabilities"]["PNEUMONIA"]

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
        "probabilities": probabilities,
    }


def serve_and_load(command: list[str], ready: str, base: str, images: list[bytes], args) -> dict:
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
        load(base, images, 4 * max(args.concurrency), max(args.concurrency))
        rss = psutil.Process(process.pid)
        before = rss.memory_info().rss
        runs = {}
        for concurrency in args.concurrency:
            start_rss = rss.memory_info().rss
            runs[f"c{concurrency}"] = load(base, images, args.requests, concurrency)
            runs[f"c{concurrency}"]["rss_growth_mb"] = round((rss.memory_info().rss - start_rss) / 2**20, 1)
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


def offline(ckpt: Path, paths: list[Path], precision: str, batch_size: int, repeats: int) -> dict:
    """The batched predictor without HTTP: decode + pre-process + InferenceModel, img/s."""
    model = InferenceModel.from_checkpoint(ckpt, operating_point="default").configure(precision)
    list(predict_paths(model, paths[:batch_size], batch_size))  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        results = list(predict_paths(model, paths, batch_size))
    wall = time.perf_counter() - start
    return {
        "images_per_s": round(repeats * len(paths) / wall, 2),
        "errors": sum(r.error is not None for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--images", type=int, default=64, help="distinct real images, cycled")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="resnet152")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    ckpt = reference_checkpoint(work / "reference.ckpt", args.backbone)
    paths = [path for path, _ in kermany_sample(args.images, "test")]
    images = [path.read_bytes() for path in paths]

    port = free_port()
    project_cmd = [sys.executable, "src/serve.py", f"ckpt_path={ckpt}", f"port={port}", "host=127.0.0.1"]
    project_cmd += [f"precision={args.precision}", f"device={args.device}", f"hydra.run.dir={work / 'run'}"]
    project_cmd += [
        f"batching.max_batch_size={args.max_batch_size}",
        f"batching.max_wait_ms={args.max_wait_ms}",
    ]
    project_cmd += ["batching.max_queue=256", "extras.print_config=false"]
    base = f"http://127.0.0.1:{port}"
    result = {"benchmark": "serve", "settings": vars(args), "machine": machine()}
    result["project"] = serve_and_load(project_cmd, f"{base}/ready", base, images, args)
    result["offline_batched_predictor"] = offline(ckpt, paths, args.precision, args.max_batch_size, 2)
    if not args.skip_baseline:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        baseline_cmd = [sys.executable, "benchmarks/baseline_server.py", str(ckpt), str(port), args.device]
        result["baseline"] = serve_and_load(baseline_cmd, f"{base}/docs", base, images, args)

    top = f"c{max(args.concurrency)}"
    project, offline_rate = result["project"][top], result["offline_batched_predictor"]["images_per_s"]
    result["fraction_of_offline"] = round(project["throughput_rps"] / offline_rate, 3)
    if "baseline" in result:
        baseline = result["baseline"][top]
        result["speedup"] = round(project["throughput_rps"] / baseline["throughput_rps"], 2)
        shared = sorted(set(project["probabilities"]) & set(baseline["probabilities"]))
        diffs = [abs(project["probabilities"][i] - baseline["probabilities"][i]) for i in shared]
        result["max_abs_prob_diff_vs_baseline"] = round(max(diffs), 5) if diffs else None
    for side in ("project", "baseline"):
        for run in result.get(side, {}).values():
            if isinstance(run, dict):
                run.pop("probabilities", None)
    emit(result, args.out)


if __name__ == "__main__":
    main()
