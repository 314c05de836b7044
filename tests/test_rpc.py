"""Tuning and verifying over TVM RPC, against a tracker and a server started here.

The "board" is this machine (an x86 rpc_server), so the test needs nothing but TVM; a real
board differs only in where its server runs.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from onnx_builders import tiny_cnn

from rebirth_tvm import RebirthError
from rebirth_tvm.compile import main as compile_main
from rebirth_tvm.backend.remote import RpcDevice


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rpc_device():
    tracker_port, server_port = _free_port(), _free_port()
    # Own process groups: the tracker and the server fork workers that must not outlive the tests.
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(tracker_port),
                                "--port-end", str(tracker_port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    server = None
    try:
        _wait_for_port(tracker_port)
        server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port),
                                   "--port-end", str(server_port + 1), "--tracker", f"127.0.0.1:{tracker_port}", "--key", "testboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        device = RpcDevice("127.0.0.1", tracker_port, "testboard")
        deadline = time.time() + 120
        while True:  # until the server has registered with the tracker
            try:
                device.session()
                break
            except RebirthError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        yield device
    finally:
        for process in (server, tracker):
            if process is not None:
                _stop_group(process)


def _stop_group(process) -> None:
    import signal

    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.mark.slow
def test_tune_over_rpc_then_verify_and_time_on_the_device(rpc_device, tmp_path, capsys):
    import onnx

    onnx.save(tiny_cnn(), str(tmp_path / "tiny.onnx"))
    tracker = f"{rpc_device.tracker_host}:{rpc_device.tracker_port}"
    args = ["--model", str(tmp_path / "tiny.onnx"), "--tune-trials", "6", "--tuning-db", str(tmp_path / "db"),
            "--rpc-tracker", tracker, "--rpc-key", rpc_device.key, "--verify", "rpc", "--out", str(tmp_path / "out")]
    assert compile_main(args) == 0
    captured = capsys.readouterr()
    assert "tuning" in captured.err and "trial" in captured.err  # the progress bar
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    tuning, verification = report["tuning"], report["verification"]
    assert tuning["measured_on"] == f"RPC device {rpc_device}"
    assert tuning["tuned_matches_untuned"]
    assert verification["passed"] and verification["ran_on"] == f"RPC device {rpc_device}"
    assert 0 < verification["latency_ms"]["min"] <= verification["latency_ms"]["median"]
    records = [json.loads(line) for line in open(tmp_path / "db" / "database_tuning_record.json")]
    # A measured record for every tuned task (the convs; the other kernels keep their rules'
    # schedules), each with its run times from the device.
    assert len({r[0] for r in records}) == tuning["tasks_tuned"] > 0, "tuning over RPC left tasks without a measured record"
    assert tuning["tasks_tuned"] + tuning["tasks_kept_template"] == tuning["tasks"]
    assert all(r[1][1] and min(r[1][1]) > 0 for r in records)


def test_unknown_device_key_is_one_line(rpc_device):
    with pytest.raises(RebirthError, match="no device with key 'no-such-board' is registered"):
        RpcDevice(rpc_device.tracker_host, rpc_device.tracker_port, "no-such-board").session()


def test_unreachable_tracker_is_one_line():
    with pytest.raises(RebirthError, match="cannot reach the RPC tracker at 127.0.0.1:"):
        RpcDevice("127.0.0.1", _free_port(), "k").session()


def test_bench_times_variants_on_the_rpc_device(rpc_device, tmp_path):
    from rebirth_tvm.bench import main

    tracker = f"{rpc_device.tracker_host}:{rpc_device.tracker_port}"
    assert main(["--models", "squeezenet1_1", "--skip-rebirth", "--repeats", "2", "--rpc-tracker", tracker,
                 "--rpc-key", rpc_device.key, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "x86" / "squeezenet1_1.json").read_text())
    assert result["measured_on"] == f"RPC device {rpc_device}"
    assert set(result["variants"]) == {"original", "exact"}  # onnxruntime does not run on the device
    for entry in result["variants"].values():
        assert entry["latency_ms"]["samples"] == 2 and entry["latency_ms"]["median"] > 0
        assert "breakdown" not in entry


def test_select_latency_times_merge_sites_on_the_rpc_device(rpc_device, tmp_path):
    """--select latency with a device: each merge site's block and rewrite are timed there."""
    import numpy as np
    import onnx
    from onnx_builders import stem

    onnx.save(stem(), str(tmp_path / "stem.onnx"))
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((20, 3, 32, 32)).astype("float32"))
    tracker = f"{rpc_device.tracker_host}:{rpc_device.tracker_port}"
    assert compile_main(["--model", str(tmp_path / "stem.onnx"), "--rebirth", "--calib", str(tmp_path / "calib.npy"),
                         "--select", "latency", "--rpc-tracker", tracker, "--rpc-key", rpc_device.key, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    measured = [s for s in report["sites"] if "before_ms" in s.get("detail", {}).get("latency", {})]
    assert measured and all(s["pass_name"] == "Rebirth" for s in measured)
    for s in measured:
        latency = s["detail"]["latency"]
        assert latency["measured_on"] == f"RPC device {rpc_device}" and latency["before_ms"] > 0 and latency["after_ms"] > 0
        assert (s["status"] == "rewritten") == latency["kept"]
