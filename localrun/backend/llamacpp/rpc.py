"""llama.cpp's RPC backend: lend this machine's devices to others, or use theirs.

A *worker* (``localrun worker``) serves its devices (its GPUs, else its CPU) over TCP with
``ggml_backend_rpc_start_server``. A *client* (``--rpc HOST:PORT``) adds each worker's devices
to ggml's registry with ``ggml_backend_rpc_add_server``: llama.cpp then counts them among its
GPUs, puts layers on them as the offload plan says, and runs each of those layers' part of
every step on the worker. Both come from the libggml that llama-cpp-python ships, built with
``-DGGML_RPC=ON`` (``scripts/cmake_args.py``): no other binary.

The protocol has no authentication and no encryption: whoever reaches a worker's port can
make it allocate memory and run graphs. A worker listens on loopback unless told otherwise.

llama.cpp aborts the process when a worker cannot be reached or breaks off mid-step. Before
any worker is handed to llama.cpp, :func:`hello` checks it from Python (the protocol's own
first message) so that the usual mistakes get a one-line error; once it is in use,
:mod:`logs`' abort handler turns llama.cpp's abort into one line and exit status 1.
"""

from __future__ import annotations

import ctypes
import ipaddress
import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from localrun.backend.llamacpp import bindings
from localrun.errors import UsageError, WorkerError

if TYPE_CHECKING:
    from localrun.backend.llamacpp.devices import Device

DEFAULT_PORT = 50052
HELLO_TIMEOUT = 10.0  # a worker answers at once, unless another client holds it
_HELLO = 14  # RPC_CMD_HELLO: fixed across protocol versions
_CAPS = 24  # RPC_CONN_CAPS_SIZE: the transport capabilities in the hello messages
_TYPE_CPU = 0
# RPC_PROTO_*_VERSION in the pinned llama.cpp's ggml-rpc.h (the wheel does not ship the
# header); tests/test_rpc.py checks it against a worker of this build.
PROTOCOL = (7, 0, 0)


@dataclass(frozen=True)
class Endpoint:
    """A worker's address, as llama.cpp writes it: ``HOST:PORT``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the address."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


_ENDPOINT = re.compile(r"^([A-Za-z0-9.\-]+):(\d{1,5})$")


def parse_endpoint(text: str, option: str = "--rpc") -> Endpoint:
    """``HOST:PORT`` (a name or an IPv4 address, as llama.cpp's RPC client takes them)."""
    match = _ENDPOINT.match(text.strip())
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise UsageError(
            f"{option} takes HOST:PORT, not {text.strip()!r}",
            f"for example {option} 192.168.1.20:{DEFAULT_PORT}",
        )
    return Endpoint(match.group(1), int(match.group(2)))


def parse_endpoints(text: str, option: str = "--rpc") -> tuple[Endpoint, ...]:
    """A comma-separated list of ``HOST:PORT``, each once."""
    found: list[Endpoint] = []
    for part in text.split(","):
        endpoint = parse_endpoint(part, option)
        if endpoint not in found:
            found.append(endpoint)
    return tuple(found)


# -- the protocol's first message, from Python -------------------------------------------------


def _receive(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data


def hello(endpoint: Endpoint, timeout: float = HELLO_TIMEOUT) -> tuple[int, int, int]:
    """Greet a worker as llama.cpp's client does first; its protocol version.

    Raises :class:`WorkerError` when nothing listens there, when it does not answer (a worker
    serves one client at a time), when it does not speak the protocol, or speaks another
    version of it than this build.
    """
    where = str(endpoint)
    start_hint = f"start one there with: localrun worker --host HOST --port {endpoint.port}"
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
            sock.sendall(struct.pack("<BQ", _HELLO, _CAPS) + bytes(_CAPS))
            size = struct.unpack("<Q", _receive(sock, 8))[0]
            if size != 4 + _CAPS:
                raise WorkerError(
                    f"{where} does not answer as an RPC worker",
                    "check the address: it should be a 'localrun worker' (or llama.cpp's "
                    "rpc-server)",
                )
            major, minor, patch = _receive(sock, 3)
    except TimeoutError:
        raise WorkerError(
            f"the RPC worker at {where} did not answer within {timeout:g} s",
            "a worker serves one client at a time: stop the other one using it, or start "
            "another worker",
        ) from None
    except socket.gaierror:
        raise WorkerError(f"unknown host in {where}", "check the worker's address") from None
    except ConnectionRefusedError:
        raise WorkerError(f"nothing listens at {where}", start_hint) from None
    except OSError as e:
        raise WorkerError(
            f"cannot reach the RPC worker at {where}: {e.strerror or e}", start_hint
        ) from None
    ours = PROTOCOL
    if major != ours[0] or minor > ours[1]:
        raise WorkerError(
            f"the RPC worker at {where} speaks protocol {major}.{minor}.{patch}, this llama.cpp "
            f"{'.'.join(map(str, ours))}",
            "install the same llama-cpp-python version on every machine",
        )
    return major, minor, patch


# -- ggml's side ------------------------------------------------------------------------------


@cache
def _lib() -> tuple[ctypes.CDLL, ctypes.CDLL, int]:
    """libggml, libggml-base, and the RPC registry (a WorkerError without one)."""
    import localrun.backend.llamacpp.logs  # noqa: F401 - its abort handler, before any worker
    from localrun.backend.llamacpp import devices

    ggml, base = devices._ggml()
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    reg = ggml.ggml_backend_reg_by_name(devices.RPC.encode())  # registry of RPC devices
    if not reg:
        raise WorkerError(
            "this llama-cpp-python was built without llama.cpp's RPC backend",
            "reinstall it with RPC, as docs/scale.md shows (pip install --no-cache-dir "
            "--force-reinstall llama-cpp-python, with CMAKE_ARGS from scripts/cmake_args.py)",
        )
    return ggml, base, int(reg)


def _function(name: str, prototype: type) -> Callable[..., object]:
    _, base, reg = _lib()
    address = base.ggml_backend_reg_get_proc_address(reg, name.encode())
    if not address:
        raise WorkerError(f"this llama.cpp's RPC backend has no {name}", "reinstall localrun")
    return prototype(address)  # type: ignore[no-any-return]


_added: dict[Endpoint, list[Device]] = {}
_held: list[int] = []  # one RPC backend per worker, never freed: it holds the connection open


@cache
def _rpc_init() -> Callable[[bytes, int], int]:
    lib = bindings.load_library("ggml-rpc")
    lib.ggml_backend_rpc_init.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_init.argtypes = [ctypes.c_char_p, ctypes.c_uint32]
    return lib.ggml_backend_rpc_init


def add_workers(endpoints: tuple[Endpoint, ...]) -> list[Device]:
    """Make the workers' devices llama.cpp's (once per process); their devices."""
    from localrun.backend.llamacpp import devices

    ggml, _, _ = _lib()
    add = _function(
        "ggml_backend_rpc_add_server", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
    )
    for endpoint in endpoints:
        if endpoint in _added:
            continue
        hello(endpoint)
        # llama.cpp connects for each question to a worker (its free memory...) unless a
        # connection is open already; this backend keeps one open for the process's life.
        _held.append(_rpc_init()(str(endpoint).encode(), 0))
        reg = add(str(endpoint).encode())
        if not reg:
            raise WorkerError(f"the RPC worker at {endpoint} has no device", "restart it")
        ggml.ggml_backend_register(reg)
        where = str(endpoint)
        _added[endpoint] = [d for d in devices.devices() if d.remote and d.description == where]
    return [d for e in endpoints for d in _added[e]]


# -- the worker -------------------------------------------------------------------------------


def worker_devices() -> list[Device]:
    """What a worker here lends: its GPUs, else its CPU (as llama.cpp's rpc-server does)."""
    from localrun.backend.llamacpp import devices

    return [devices.describe(dev) for dev in _worker_handles()]


def _worker_handles() -> list[int]:
    from localrun.backend.llamacpp import devices

    local = [(dev, devices.describe(dev)) for dev in devices.handles()]
    found = [dev for dev, d in local if d.is_gpu and not d.remote]
    if not found:
        ggml, _ = devices._ggml()
        found = [ggml.ggml_backend_dev_by_type(_TYPE_CPU)]
    return found


_SERVE = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p),
)  # fmt: skip


def check_port(endpoint: Endpoint) -> None:
    """Refuse, in one line, an address this machine cannot listen on."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((endpoint.host, endpoint.port))
    except socket.gaierror:
        raise UsageError(
            f"unknown host {endpoint.host!r}", "give an address of this machine"
        ) from None
    except OSError as e:
        raise WorkerError(
            f"cannot listen on {endpoint}: {e.strerror or e}",
            "choose another --port (or stop what uses it)",
        ) from None


def serve(endpoint: Endpoint, n_threads: int, cache_dir: Path | None) -> threading.Thread:
    """Serve this machine's devices at ``endpoint`` on a thread (it runs until the process
    ends, or returns at once when it cannot listen)."""
    serve_fn = _function("ggml_backend_rpc_start_server", _SERVE)
    handles = _worker_handles()
    array = (ctypes.c_void_p * len(handles))(*handles)
    cache = str(cache_dir).encode() if cache_dir is not None else None

    def run() -> None:
        serve_fn(str(endpoint).encode(), cache, n_threads, len(handles), array)

    thread = threading.Thread(target=run, name="rpc-worker", daemon=True)
    thread.start()
    return thread
