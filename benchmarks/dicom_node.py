"""DICOM node under load: N instances over K concurrent associations, receipt to result-in-Orthanc latency.

A private Orthanc (Debian's package) is the destination; the node (`src/dicom_node.py`, its own process)
receives real chest DICOMs (../shared/data/dicom_samples, each sent as a new instance) from K C-STORE clients
at once. Per instance: the time from the node's C-STORE success to both results (SR and overlay) being in
Orthanc, seen on Orthanc's change log (polled every 50 ms). Lost: instances without both results at the
deadline; duplicated: instances in Orthanc beyond the expected results.

    python benchmarks/dicom_node.py --count 200 --associations 4 [--ckpt model.ckpt]
"""

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import ROOT, emit, machine, reference_checkpoint

sys.path.insert(0, str(ROOT / "tests"))
from dicom_node_helpers import AP_SAMPLE, NODE_AET, PA_SAMPLE, NodeProcess, store, variant
from omegaconf import OmegaConf

from pneumonia_cam.dicom_node.orthanc import Orthanc, free_port
from pneumonia_cam.dicom_node.results import ModelIdentity, ResultBuilder
from pneumonia_cam.utils.run_config import checkpoint_sha256

POLL_S = 0.05


def expected_results(ckpt: Path, source_uids: list[str]) -> dict[str, str]:
    """Result SOP Instance UID -> source UID, derived as the node derives them (configs/dicom_node.yaml)."""
    prefix = OmegaConf.load(ROOT / "configs" / "dicom_node.yaml").results.uid_prefix
    builder = ResultBuilder(ModelIdentity("", checkpoint_sha256(ckpt), [], ""), prefix, "", 0, 0)
    return {builder.uid(uid, kind): uid for uid in source_uids for kind in ("sr", "overlay")}


def watch(pacs: Orthanc, arrivals: dict[str, float], stop: threading.Event) -> None:
    """Record when each new instance shows up in Orthanc (SOP Instance UID -> time)."""
    import requests

    since = 0
    while not stop.is_set():
        page = pacs.changes(since)
        now = time.perf_counter()
        for change in page["Changes"]:
            if change["ChangeType"] == "NewInstance":
                tags = requests.get(f"{pacs.url}/instances/{change['ID']}", timeout=10).json()[
                    "MainDicomTags"
                ]
                arrivals.setdefault(tags["SOPInstanceUID"], now)
        since = page["Last"]
        if page["Done"]:
            stop.wait(POLL_S)


def run_load(ckpt: Path, workdir: Path, count: int, associations: int, timeout_s: float) -> dict:
    """`count` instances over `associations` clients: throughput, latency percentiles, lost, duplicated."""
    datasets = [variant((PA_SAMPLE, AP_SAMPLE)[i % 2], 100_000 + i) for i in range(count)]
    expected = expected_results(ckpt, [d.SOPInstanceUID for d in datasets])
    port = free_port()
    received: dict[str, float] = {}
    refused: list[int] = []

    def stored(dataset, status) -> None:
        if status and status.Status == 0:
            received[dataset.SOPInstanceUID] = time.perf_counter()
        else:
            refused.append(int(status.Status) if status else -1)

    with Orthanc(workdir / "pacs", modalities={"node": (NODE_AET, "127.0.0.1", port)}) as pacs:
        node = NodeProcess(
            workdir / "node", port, [f"ckpt_path={ckpt}", f"destination.port={pacs.dicom_port}"]
        )
        node.start()
        arrivals: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(pacs, arrivals, stop), daemon=True)
        watcher.start()
        try:
            start = time.perf_counter()
            chunks = [datasets[i::associations] for i in range(associations)]
            clients = [
                threading.Thread(target=store, args=(port, chunk), kwargs={"on_stored": stored})
                for chunk in chunks
            ]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            sent_s = time.perf_counter() - start
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not set(expected) <= set(arrivals):
                time.sleep(POLL_S)
            time.sleep(1.0)  # anything arriving late (a duplicate) shows up now
            stop.set()
            watcher.join()
            in_orthanc = pacs.count_instances()
            version = pacs.version()
        finally:
            node.stop()
    done = {}
    for result_uid, source_uid in expected.items():
        if result_uid in arrivals:
            done.setdefault(source_uid, []).append(arrivals[result_uid])
    latencies = [
        max(times) - received[uid] for uid, times in done.items() if len(times) == 2 and uid in received
    ]
    complete = len(latencies)
    last = max((max(times) for times in done.values()), default=start)
    return {
        "instances": count,
        "associations": associations,
        "accepted": len(received),
        "refused": len(refused),
        "results_expected": len(expected),
        "results_in_orthanc": in_orthanc,
        "lost": count - complete,
        "duplicated": in_orthanc - sum(uid in arrivals for uid in expected),
        "send_s": round(sent_s, 2),
        "wall_s": round(last - start, 2),
        "throughput_instances_per_s": round(complete / (last - start), 2) if complete else 0.0,
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "orthanc": version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--ckpt", default=None, help="a checkpoint; default: a random-weight reference one")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dicom_node.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dicom_node_bench_"))
    ckpt = (
        Path(args.ckpt)
        if args.ckpt
        else reference_checkpoint(work / "reference.ckpt", args.backbone, args.image_size)
    )
    result = {"benchmark": "dicom_node", "settings": vars(args), "machine": machine()}
    result["load"] = run_load(ckpt, work, args.count, args.associations, args.timeout_s)
    emit(result, args.out)


if __name__ == "__main__":
    main()
