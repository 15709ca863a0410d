"""llama.cpp RPC: ``localrun worker``, ``--rpc``, and the offload plan over other machines.

The loopback tests run a real worker process and a real client process on this machine: the
demo model is split between them over TCP, and its greedy text must be the one it gives alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localrun.backend.llamacpp import rpc
from localrun.backend.llamacpp.offload import GPU, ModelSizes, plan
from localrun.errors import UsageError, WorkerError
from tests.proc import LOCALRUN, run
from tests.served import Background, Server, free_port

GB = 1_000_000_000
PROMPT = "The three primary colors are"


@pytest.fixture
def home(localrun_home: Path) -> Path:
    return localrun_home


# -- addresses and the first message --------------------------------------------------------


def test_endpoints_are_host_and_port_each_once() -> None:
    found = rpc.parse_endpoints("10.0.0.2:50052, gpu-box:6000,10.0.0.2:50052")
    assert [str(e) for e in found] == ["10.0.0.2:50052", "gpu-box:6000"]
    assert rpc.parse_endpoint("127.0.0.1:1").loopback
    assert rpc.parse_endpoint("localhost:1").loopback
    assert not rpc.parse_endpoint("0.0.0.0:1").loopback
    for bad in ("10.0.0.2", "10.0.0.2:0", "10.0.0.2:70000", "http://x:1", ":1"):
        with pytest.raises(UsageError, match="--rpc takes HOST:PORT"):
            rpc.parse_endpoints(bad)


@contextlib.contextmanager
def fake_worker(answer: Callable[[socket.socket], None]) -> Iterator[rpc.Endpoint]:
    """A TCP server on loopback that answers its first client with ``answer``."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield rpc.Endpoint("127.0.0.1", port)
    finally:
        server.close()
        thread.join(5)


def read_hello(conn: socket.socket) -> bytes:
    data = b""
    while len(data) < 1 + 8 + 24:
        data += conn.recv(64)
    return data


def test_hello_tells_apart_what_is_wrong_with_a_worker() -> None:
    with pytest.raises(WorkerError, match=r"nothing listens at 127\.0\.0\.1:") as e:
        rpc.hello(rpc.Endpoint("127.0.0.1", free_port()))
    assert e.value.hint is not None and "localrun worker" in e.value.hint

    # Busy (a worker serves one client at a time): it accepts and says nothing.
    def silent_answer(conn: socket.socket) -> None:
        conn.recv(64)
        time.sleep(2)  # as a busy worker, which answers only its first client

    silent = fake_worker(silent_answer)
    with silent as busy, pytest.raises(WorkerError, match=r"did not answer within 0\.5 s"):
        rpc.hello(busy, timeout=0.5)
    # Not a worker at all: an HTTP server, say.
    http = fake_worker(lambda conn: conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    with http as web, pytest.raises(WorkerError, match="does not answer as an RPC worker"):
        rpc.hello(web)


def hello_reply(major: int, minor: int, patch: int) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        request = read_hello(conn)
        assert request[0] == 14 and struct.unpack("<Q", request[1:9])[0] == 24  # RPC_CMD_HELLO
        conn.sendall(struct.pack("<Q", 28) + bytes([major, minor, patch, 0]) + bytes(24))

    return answer


def test_hello_reads_the_worker_protocol_and_refuses_another_major_version() -> None:
    ours = rpc.PROTOCOL
    with fake_worker(hello_reply(*ours)) as same:
        assert rpc.hello(same) == ours
    newer = fake_worker(hello_reply(ours[0] + 1, 0, 0))
    with newer as other, pytest.raises(WorkerError, match=rf"protocol {ours[0] + 1}\.0\.0") as e:
        rpc.hello(other)
    assert e.value.hint is not None and "same llama-cpp-python version" in e.value.hint


# -- the plan ---------------------------------------------------------------------------


def sizes(n_layer: int = 18, layer: int = 10_000_000) -> ModelSizes:
    return ModelSizes((layer,) * n_layer, (1_000_000,) * n_layer, 2 * layer, 1000)


def test_with_workers_only_the_cpu_keeps_its_share_by_free_memory() -> None:
    worker = GPU("worker 10.0.0.2:50052", 8 * GB, 16 * GB, remote=True)
    cpu = GPU("CPU", 8 * GB, 16 * GB)
    p = plan(sizes(), [worker], cpu=cpu)
    # Equal free memory: half of the 19 layers (18 and the output) go to the worker.
    assert p.n_gpu_layers == 10 and p.placement == "RPC 10/19"
    assert p.parts() == [("CPU", 0, 8), ("worker 10.0.0.2:50052", 9, 18)]
    assert "layers 0-8 on CPU, layers 9-17 and output on worker 10.0.0.2:50052" in p.describe()
    # A worker with three times the free memory: after each side's margin (5% of its total)
    # and compute reserve, 22.0 GB against 6.8 GB, so 0.76 of the 19 layers.
    big = GPU("worker 10.0.0.3:50052", 24 * GB, 32 * GB, remote=True)
    assert plan(sizes(), [big], cpu=cpu).n_gpu_layers == 15
    # Asked for a count: that count, wherever the memory is.
    assert plan(sizes(), [worker], 4, cpu=cpu).parts()[-1] == ("worker 10.0.0.2:50052", 15, 18)
    assert plan(sizes(), [worker], 0, cpu=cpu).placement == "CPU"
    assert p.local_gpu_bytes == 0  # the worker's memory, not this machine's GPU's


def test_a_local_gpu_and_workers_take_the_layers_that_fit_and_split_them() -> None:
    worker = GPU("worker 10.0.0.2:50052", 8 * GB, 16 * GB, remote=True)
    gpu = GPU("Sim GPU", 8 * GB, 16 * GB)
    cpu = GPU("CPU", 64 * GB, 128 * GB)
    p = plan(sizes(), [worker, gpu], cpu=cpu)
    assert p.n_gpu_layers == 19 and p.placement == "GPU+RPC 19/19"
    assert p.split is not None and p.split[0] == pytest.approx(0.5)
    # llama.cpp's rule: layer i goes to the first device whose cumulative share exceeds i/19.
    assert p.parts() == [("worker 10.0.0.2:50052", 0, 9), ("Sim GPU", 10, 18)]
    assert p.local_gpu_bytes == pytest.approx(p.gpu_bytes / 2, rel=0.01)


# -- the worker command ---------------------------------------------------------------------


def test_a_worker_refuses_a_public_address_without_being_told_it_is_unauthenticated(
    home: Path,
) -> None:
    done = run(home, "worker", "--host", "0.0.0.0", "--port", str(free_port()))
    assert done.code == 2
    assert "no authentication or encryption" in done.stderr
    assert "--i-know-rpc-is-unauthenticated" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_worker_on_a_taken_port_says_so(home: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run(home, "worker", "--port", str(port))
    assert done.code == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_run_with_a_worker_that_is_not_there_fails_in_one_line(home: Path) -> None:
    port = free_port()
    done = run(home, "run", "demo", "--rpc", f"127.0.0.1:{port}", "hi")
    assert done.code == 1, done.stderr
    assert done.stderr.strip() == (
        f"Error: nothing listens at 127.0.0.1:{port}. Hint: start one there with: "
        f"localrun worker --host HOST --port {port}"
    )


# -- a worker and a client on this machine ------------------------------------------------


class Worker(Background):
    """``localrun worker`` in a subprocess, on a free loopback port."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        super().__init__(home, "worker", "--port", str(self.port), "--threads", "2")

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Until the worker's stderr has ``text`` (or it has ended: then fail)."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"worker exited {self.proc.returncode}: {self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s: {self.stderr}")
            time.sleep(0.05)


@pytest.fixture
def worker(home: Path) -> Iterator[Worker]:
    w = Worker(home)
    try:
        w.wait_for("worker listening on")
        yield w
    finally:
        w.stop(timeout=30)


def answer(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """The demo model's greedy answer to PROMPT, and the --verbose report."""
    flags = ("--temperature", "0", "--max-tokens", "40", "--verbose", "--no-prompt-cache")
    done = run(home, "run", "demo", *flags, *args, PROMPT, timeout=300, env=env)
    assert done.code == 0, done.stderr
    return done.stdout, done.stderr


def test_a_model_split_with_a_loopback_worker_answers_as_it_does_alone(
    home: Path, worker: Worker
) -> None:
    assert "lends CPU" in worker.stderr and "tensor cache:" in worker.stderr
    # The protocol version localrun expects is the one this build's worker speaks.
    assert rpc.hello(rpc.parse_endpoint(worker.endpoint)) == rpc.PROTOCOL
    worker.wait_for("client disconnected")  # that greeting came and went
    # The same kernels on both sides: a worker cannot repack weights for llama.cpp's fastest
    # CPU kernels, whose other order of sums makes greedy text part at a near tie.
    alone, _ = answer(home, "--no-repack")
    split, report = answer(home, "--no-repack", "--rpc", worker.endpoint)
    assert split == alone and len(split.split()) > 10
    # Half the layers here, half there (both sides report the same free memory).
    placement = re.search(r"RPC: (\d+)/19", report)
    assert placement is not None and 5 <= int(placement.group(1)) <= 14, report
    assert f"on worker {worker.endpoint}" in report and "on CPU" in report
    worker.wait_for("client disconnected")
    assert "client connected" in worker.stderr


def test_batch_and_bench_through_a_worker(home: Path, worker: Worker) -> None:
    import json

    jobs = home / "jobs.jsonl"
    lines = [{"id": n, "prompt": f"Count to {n}:", "max_tokens": 6} for n in (3, 4, 5)]
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    batch = run(home, "run", "demo", "--rpc", worker.endpoint, "--batch", str(jobs),
                "--parallel", "2", "--verbose", timeout=300)  # fmt: skip
    assert batch.code == 0, batch.stderr
    out = [json.loads(line) for line in batch.stdout.splitlines()]
    assert [o["id"] for o in out] == [3, 4, 5]
    assert all(o["stats"]["completion_tokens"] == 6 for o in out)
    bench = run(home, "bench", "demo", "--rpc", worker.endpoint, "-p", "32", "-n", "8",
                "-r", "1", "--json", timeout=300)  # fmt: skip
    assert bench.code == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["placement"].startswith("RPC ") and report["decode_tokens_per_s"] > 0


def test_the_plan_says_where_llama_cpp_put_each_layer(home: Path, worker: Worker) -> None:
    # llama.cpp's own debug log names each layer's device: the plan must agree with it.
    _, log = answer(home, "--rpc", worker.endpoint, env={"LOCALRUN_DEBUG": "1"})
    placed = dict(re.findall(r"layer +(\d+) assigned to device (\S+?),", log))
    assert len(placed) == 19, log[-3000:]
    stated = re.search(r"RPC: (\d+)/19", log)
    assert stated is not None
    k = int(stated.group(1))
    on_cpu = {int(layer) for layer, device in placed.items() if device == "CPU"}
    on_worker = {int(layer) for layer, device in placed.items() if device.startswith("RPC")}
    assert on_cpu == set(range(19 - k)) and on_worker == set(range(19 - k, 19))


def test_losing_the_worker_mid_answer_ends_the_run_in_one_line(home: Path, worker: Worker) -> None:
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    env.pop("LOCALRUN_DEBUG", None)
    client = subprocess.Popen(
        [LOCALRUN, "run", "demo", "--rpc", worker.endpoint, "--max-tokens", "4000",
         "--ctx", "4096", "--no-prompt-cache", "Write a very long story."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        os.set_blocking(client.stdout.fileno(), True)
        first = client.stdout.read(1)  # the answer has begun: layers run on the worker
        assert first, client.stderr.read() if client.stderr else ""
        worker.proc.kill()
        _, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: lost an RPC worker"), err


def test_serve_with_a_worker_answers_and_says_where_the_layers_are(
    home: Path, worker: Worker
) -> None:
    import httpx

    server = Server(home, "--rpc", worker.endpoint, "--model", "demo")
    try:
        server.wait_ready(timeout=180)
        assert f"RPC worker {worker.endpoint} lends RPC0" in server.stderr
        body = {"model": "demo", "prompt": PROMPT, "stream": False}
        body["options"] = {"temperature": 0, "num_predict": 12}
        done = httpx.post(server.url + "/api/generate", json=body, timeout=180)
        assert done.status_code == 200 and done.json()["eval_count"] == 12
        (loaded,) = httpx.get(server.url + "/api/ps", timeout=30).json()["models"]
        assert loaded["placement"].startswith("RPC ") and loaded["size_vram"] == 0
    finally:
        assert server.stop() in (0, 130), server.stderr
