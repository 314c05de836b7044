"""A real device over TVM RPC: tune on it, run an exported library on it, time it there.

The board (or GPU machine) runs TVM's RPC server registered with a tracker::

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190                   # anywhere reachable
    python -m tvm.exec.rpc_server --tracker TRACKER_HOST:9190 --key rk3399      # on the board

and ``--rpc-tracker TRACKER_HOST:9190 --rpc-key rk3399`` on our side. MetaSchedule then measures
candidates on the board (:meth:`RpcDevice.runner`), and :func:`run_remote` runs the final
``model.so`` there: its outputs are checked against the x86 build and its latency is a real
device measurement.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np

from rebirth_tvm.core.errors import RebirthError


@dataclass(frozen=True)
class RpcDevice:
    tracker_host: str
    tracker_port: int
    key: str
    session_timeout: int = 120

    @classmethod
    def parse(cls, tracker: str, key: str | None) -> "RpcDevice":
        """``"HOST:PORT"`` and a device key, as given on the command line."""
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RebirthError(f"--rpc-tracker {tracker!r}: use HOST:PORT, e.g. 192.168.1.20:9190")
        if not key:
            raise RebirthError("--rpc-tracker needs --rpc-key, the key the board's rpc_server registered with")
        return cls(host, int(port), key)

    def __str__(self) -> str:
        return f"{self.key}@{self.tracker_host}:{self.tracker_port}"

    def check_reachable(self, timeout: float = 3.0) -> None:
        """One TCP connection attempt to the tracker with a short timeout, before any work
        (TVM's own client retries for a minute, printing a warning every five seconds)."""
        import socket

        try:
            with socket.create_connection((self.tracker_host, self.tracker_port), timeout=timeout):
                pass
        except OSError as err:
            raise RebirthError(f"cannot reach the RPC tracker at {self.tracker_host}:{self.tracker_port}: "
                               f"{err.strerror or err or 'timed out'}") from None

    def session(self):
        """An RPC session on one device with this key (waits while all are busy)."""
        from tvm import rpc

        self.check_reachable()
        try:
            tracker = rpc.connect_tracker(self.tracker_host, self.tracker_port)
        except Exception as err:
            raise RebirthError(f"cannot reach the RPC tracker at {self.tracker_host}:{self.tracker_port}: {_first_line(err)}") from None
        # Servers register as "server:KEY"; compare whole keys ("rk" must not match "rk3399").
        keys = {str(server["key"]).split(":", 1)[-1] for server in tracker.summary().get("server_info", [])}
        if self.key not in keys:
            raise RebirthError(f"no device with key {self.key!r} is registered at the tracker {self.tracker_host}:{self.tracker_port}")
        try:
            return tracker.request(self.key, session_timeout=self.session_timeout)
        except Exception as err:
            raise RebirthError(f"cannot open a session on {self}: {_first_line(err)}") from None

    def runner(self, evaluator_config):
        """A MetaSchedule runner that measures candidates on this device."""
        from tvm.s_tir import meta_schedule as ms

        self.session()  # fail now, with a clear message, rather than in every trial
        config = ms.runner.RPCConfig(tracker_host=self.tracker_host, tracker_port=self.tracker_port,
                                     tracker_key=self.key, session_timeout_sec=self.session_timeout)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator_config, max_workers=1)


def load_on_device(session, library: str, remote_name: str, target, inputs):
    """Upload ``library``, load it in a VM on the session's device and set ``inputs`` for ``main``.

    Returns ``(vm, device, arguments)``; ``vm.invoke_stateful("main")`` then runs one inference.
    """
    import tvm
    from tvm import relax


    session.upload(library, remote_name)
    module = session.load_module(remote_name)
    dev = session.cuda(0) if target.is_cuda else session.cpu(0)
    vm = relax.VirtualMachine(module, dev)
    arguments = [tvm.runtime.tensor(np.ascontiguousarray(x), dev) for x in inputs]
    vm.set_input("main", *arguments)
    return vm, dev, arguments


def run_remote(library: str, inputs, device: RpcDevice, target, repeat: int = 10):
    """Upload ``library`` (an exported model.so), run it on the device; returns (outputs, timing).

    ``timing`` is measured on the device by TVM's time evaluator: ``latency_ms`` median, min and
    max over ``repeat`` runs after one warm-up.
    """
    session = device.session()
    try:
        vm, dev, arguments = load_on_device(session, library, "rebirth_model.so", target, inputs)
        outputs = _to_numpy(vm["main"](*arguments))
        timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeat, min_repeat_ms=0)
        seconds = np.asarray(timer("main").results) * 1e3
    except RebirthError:
        raise
    except Exception as err:
        raise RebirthError(f"running {os.path.basename(library)} on {device} failed: {_first_line(err)}") from None
    timing = {"median": float(np.median(seconds)), "min": float(seconds.min()), "max": float(seconds.max()), "runs": int(repeat)}
    return outputs, timing


def _to_numpy(value):
    if hasattr(value, "numpy"):
        return [value.numpy()]
    out = []
    for item in value:
        out.extend(_to_numpy(item))
    return out


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def export_for_device(built, directory: str | None = None) -> str:
    """Export ``built`` into a (temporary) directory; returns the library's path."""
    directory = directory or tempfile.mkdtemp(prefix="rebirth-export-")
    path = os.path.join(directory, "model.so")
    built.export(path)
    return path
