"""A managed local vLLM server: lmlang starts it, health-checks it, reuses it and stops it.

Contract (what the runtime calls for a `model NAME = vllm "SPEC" { ... }` source)
---------------------------------------------------------------------------------

    ServerOptions(model="default", name=None, tensor_parallel=1, dtype=None, max_model_len=None,
                  gpu_memory=None, args=(), lora_modules=(), max_lora_rank=None, enable_lora=False,
                  max_loras=4, structured_backend="guidance", startup_timeout=900.0)
        `model` is any spec lmlang.models.loader.resolve_model accepts (default, a folder, a
        .gguf, a hub id already in the local HF cache): the server only ever reads that local
        folder (HF_HUB_OFFLINE=1). `name` is the served model name (default: the model's name).
        `lora_modules` are (name, folder) pairs; requests name a module as their `model`.
        `enable_lora`: serve LoRA modules, also ones loaded later (load_lora) up to
        `max_lora_rank` (default 64 when no module is given at start).
    start_server(options, progress=True) -> ManagedServer
        one server per configuration in a process: a second call returns the running one when
        it serves these options (same model and engine settings; a LoRA-enabled server also
        serves options without LoRA, or with LoRA modules it can load), else starts one; a dead
        one is restarted; every server is stopped at interpreter exit.
    ManagedServer
        .base_url ("http://127.0.0.1:PORT/v1")  .name  .port  .log_path  .start_seconds  .folder
        .endpoint(**client options) -> client.Endpoint   .alive() -> bool   .stop()
        .load_lora(name, folder)    a LoRA module, loaded once (vLLM's runtime LoRA loading)
        .serves(options) -> bool    this server can answer for those options
        .structured_backend  ("guidance": lowered constraints map exactly, see structured.py)
    attach_server(base_url, options, name) -> ManagedServer
        a vLLM started elsewhere with these options (by another process, or by hand as
        docs/serving.md shows), registered so start_server(options) reuses it; never stopped
        by lmlang (the test suite's LMLANG_TEST_VLLM_URL)
    stop_all()
    reap_orphans() -> [pid]                    stop servers left behind by a killed lmlang process
                                               (start_server calls it; records live in cache_dir("servers"))
    ServerStartError (LmlangRuntimeError): the process died or never became healthy; quotes the log tail.

Defaults on a CPU-only machine (measured, /work/shared/NOTES.md: ~1 min start, ~4.3 GB,
~9 tok/s on 2 cores): OMP_NUM_THREADS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
VLLM_CPU_KVCACHE_SPACE=2, --enforce-eager (without it the compile takes 5-6 min and its
cache does not reload) --distributed-executor-backend uni --dtype float32 --max-model-len
2048. `gpu_memory` and `tensor_parallel` > 1 only mean something on a GPU.

Two flags keep the server's meaning equal to lmlang's local decoding:
- `--generation-config vllm`: otherwise vLLM applies the model folder's
  generation_config.json as default sampling parameters, and a request that leaves
  top_p/top_k out would sample differently than locally.
- `--structured-outputs-config {"backend": "guidance"}`: llguidance is lmlang's own
  first backend, so every plan lmlang lowers (regex, JSON with lmlang's layout, Lark
  with `&` intersections) means the same on the server; vLLM's "auto" picks xgrammar,
  which turns Lark into EBNF and has no intersection.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import LmlangRuntimeError
from ..home import cache_dir
from .client import Endpoint
from .vllm_env import VllmEnv, ensure_vllm

from ..models.sources import VLLM_LORA_RANKS as LORA_RANKS  # the ranks vLLM 0.32 accepts for --max-lora-rank

DEFAULT_LORA_RANK = 64  # --max-lora-rank of a LoRA-enabled server started without modules
CPU_ENV = {"OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}
CPU_ARGS = ("--enforce-eager", "--distributed-executor-backend", "uni")
CPU_DTYPE = "float32"
CPU_MAX_MODEL_LEN = 2048
KEEP_LOGS = 20


class ServerStartError(LmlangRuntimeError):
    """A managed server died or never became healthy."""


@dataclass(frozen=True)
class ServerOptions:
    model: str = "default"
    name: str | None = None
    tensor_parallel: int = 1
    dtype: str | None = None
    max_model_len: int | None = None
    gpu_memory: float | None = None
    args: tuple[str, ...] = ()
    lora_modules: tuple[tuple[str, str], ...] = ()
    max_lora_rank: int | None = None
    enable_lora: bool = False
    max_loras: int = 4
    structured_backend: str = "guidance"
    startup_timeout: float = 900.0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def lora(self) -> bool:
        return self.enable_lora or bool(self.lora_modules)

    def engine_key(self) -> str:
        """What decides how the server computes: two option sets with the same
        engine key (and LoRA covered) can share one server."""
        fields = ("model", "tensor_parallel", "dtype", "max_model_len", "gpu_memory", "args", "structured_backend")
        return json.dumps([getattr(self, f) for f in fields], default=str)

    def lora_rank(self) -> int:
        if self.max_lora_rank:
            return self.max_lora_rank
        if self.lora_modules:
            return lora_rank_for([p for _, p in self.lora_modules])
        return DEFAULT_LORA_RANK


class ManagedServer:
    def __init__(self, options: ServerOptions, env: VllmEnv | None, folder: Path, name: str, port: int, log_path: Path):
        self.options = options
        self.env = env
        self.folder = folder
        self.name = name
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self.loras: dict[str, str] = dict(options.lora_modules)  # LoRA modules served: name -> folder
        self._lora_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def structured_backend(self) -> str:
        return self.options.structured_backend

    def endpoint(self, model: str | None = None, **client_options) -> Endpoint:
        return Endpoint(self.base_url, model or self.name, **client_options)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    attached = False  # started elsewhere (attach_server): not ours to stop

    def alive(self) -> bool:
        if self.attached:
            return _get(f"http://127.0.0.1:{self.port}/health") is not None
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `grace` seconds."""
        if self.attached:
            return
        p = self.process
        if p is not None and p.poll() is None:
            _kill_group(p.pid, grace, p.wait)
        _forget(p.pid if p is not None else None)

    def serves(self, options: ServerOptions) -> bool:
        """Can this (running) server answer requests made for `options`?"""
        mine = self.options
        if mine.engine_key() != options.engine_key():
            return False
        if not options.lora:
            return True
        if not mine.lora:
            return False
        return mine.lora_rank() >= options.lora_rank() and mine.max_loras >= options.max_loras

    def load_lora(self, name: str, folder: str | Path, timeout: float = 600.0) -> str:
        """Serve the PEFT folder as LoRA module `name` (vLLM's POST /v1/load_lora_adapter);
        a module already served under that name is not loaded again. Returns the name."""
        folder = str(folder)
        with self._lora_lock:
            if self.loras.get(name) == folder:
                return name
            if not self.options.lora:
                raise ServerStartError(
                    f"vLLM for '{self.name}' was started without LoRA support", hint="start it with enable_lora=True"
                )
            need = lora_rank_for([folder])
            if need > self.options.lora_rank():
                raise ServerStartError(
                    f"LoRA module '{name}' has rank {need}, more than this server's "
                    f"max_lora_rank {self.options.lora_rank()}",
                    hint=f"set max_lora_rank: {need if need in LORA_RANKS else 'a larger rank'}",
                )
            try:
                self._post_lora(name, folder, inplace=False, timeout=timeout)
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", errors="replace")[:500]
                if e.code == 400 and "already been loaded" in detail:
                    # A server shared with another lmlang process (attach_server): the name is
                    # ours to define, so reload it from this folder.
                    self._post_lora(name, folder, inplace=True, timeout=timeout)
                else:
                    raise ServerStartError(
                        f"vLLM refused LoRA module '{name}' ({folder}): HTTP {e.code}: {detail}",
                        hint=log_tail(self.log_path),
                    ) from None
            except (urllib.error.URLError, OSError) as e:
                raise ServerStartError(
                    f"cannot load LoRA module '{name}' into vLLM: {e}", hint=log_tail(self.log_path)
                ) from None
            self.loras[name] = folder
            return name

    def _post_lora(self, name: str, folder: str, inplace: bool, timeout: float) -> None:
        body = json.dumps({"lora_name": name, "lora_path": folder, "load_inplace": inplace}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/load_lora_adapter",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"ManagedServer({self.name!r} at {self.base_url}, {state}, log {self.log_path})"


_SERVERS: dict[str, ManagedServer] = {}
_LOCK = threading.Lock()


def start_server(options: ServerOptions, progress: bool = True) -> ManagedServer:
    """The running server for these options, started (and health-checked) if needed.
    A running server started for other options is reused when it serves these
    (see ManagedServer.serves); their LoRA modules are loaded into it."""
    for lname, lpath in options.lora_modules:  # before any server is started or reused
        if not (Path(lpath) / "adapter_config.json").is_file():
            raise ServerStartError(
                f"LoRA module '{lname}': {lpath} is not a PEFT adapter folder (no adapter_config.json)"
            )
    key = options.key()
    with _LOCK:
        server = _SERVERS.get(key)
        if server is None or not server.alive():
            server = next((s for s in _SERVERS.values() if s.alive() and s.serves(options)), None)
        if server is None:
            reap_orphans(progress)
            server = _launch(options, progress)
        _SERVERS[key] = server
    for name, folder in options.lora_modules:
        server.load_lora(name, folder)
    return server


def attach_server(base_url: str, options: ServerOptions, name: str) -> ManagedServer:
    """A running vLLM on this machine (started with `options`, serving `name`),
    registered so that start_server(options) and compatible options reuse it."""
    from urllib.parse import urlsplit

    from ..models.loader import resolve_model

    port = urlsplit(base_url).port
    if port is None or urlsplit(base_url).hostname not in ("127.0.0.1", "localhost"):
        raise ServerStartError(f"cannot attach to {base_url}: a managed server listens on 127.0.0.1:PORT")
    server = ManagedServer(options, None, resolve_model(options.model), name, port, Path(os.devnull))
    server.attached = True
    if not server.alive():
        raise ServerStartError(f"no vLLM answers at {base_url}/health")
    with _LOCK:
        _SERVERS[options.key()] = server
    return server


def stop_all() -> None:
    with _LOCK:
        for server in set(_SERVERS.values()):
            server.stop()
        _SERVERS.clear()


atexit.register(stop_all)


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"lmlang: {text}", file=sys.stderr, flush=True)


def _launch(options: ServerOptions, progress: bool) -> ManagedServer:
    from ..models.loader import model_name, resolve_model

    folder = resolve_model(options.model)
    name = options.name or model_name(folder)
    env = ensure_vllm(progress=progress)
    port = free_port()
    logs = cache_dir("logs")
    _prune_logs(logs)
    log_path = logs / f"vllm-{options.key()}-{os.getpid()}-{port}.log"
    server = ManagedServer(options, env, folder, name, port, log_path)
    argv = env.server_argv() + server_args(options, folder, name, port, env.flavor)
    _say(progress, f"starting vLLM {env.version} for '{name}' on 127.0.0.1:{port} (log: {log_path})")
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        server.process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(env.flavor, lora=options.lora),
            start_new_session=True,
            cwd=str(logs),
        )
    _remember(server)
    try:
        _wait_ready(server, options.startup_timeout)
    except BaseException:
        server.stop(grace=5.0)
        raise
    server.start_seconds = time.monotonic() - t0
    _say(progress, f"vLLM ready in {server.start_seconds:.0f} s at {server.base_url}")
    return server


def server_args(options: ServerOptions, folder: Path, name: str, port: int, flavor: str) -> list[str]:
    """The command-line arguments after `python -m <server module>` (pure: unit-tested)."""
    cpu = flavor == "cpu"
    args = [
        "--model",
        str(folder),
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--generation-config",
        "vllm",
        "--structured-outputs-config",
        json.dumps({"backend": options.structured_backend}),
    ]
    dtype = options.dtype or (CPU_DTYPE if cpu else None)
    if dtype:
        args += ["--dtype", dtype]
    max_len = options.max_model_len or (CPU_MAX_MODEL_LEN if cpu else None)
    if max_len:
        args += ["--max-model-len", str(max_len)]
    if options.tensor_parallel != 1:
        args += ["--tensor-parallel-size", str(options.tensor_parallel)]
    if options.gpu_memory is not None and not cpu:
        args += ["--gpu-memory-utilization", str(options.gpu_memory)]
    if cpu:
        args += [a for a in CPU_ARGS if a not in options.args]
    if options.lora:
        slots = max(len(options.lora_modules), options.max_loras if options.enable_lora else 1)
        args += ["--enable-lora", "--max-lora-rank", str(options.lora_rank()), "--max-loras", str(slots)]
        if options.lora_modules:
            args += ["--lora-modules", *[f"{n}={p}" for n, p in options.lora_modules]]
    return args + list(options.args)


def lora_rank_for(folders: list[str]) -> int:
    """The smallest rank vLLM accepts that covers every adapter's `r`."""
    need = 1
    for folder in folders:
        try:
            cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
        except (OSError, ValueError) as e:
            raise ServerStartError(f"cannot read the LoRA adapter config in {folder}: {e}") from None
        ranks = [cfg.get("r") or 0, *(cfg.get("rank_pattern") or {}).values()]
        need = max(need, *[int(r) for r in ranks])
    for allowed in LORA_RANKS:
        if allowed >= need:
            return allowed
    raise ServerStartError(f"a LoRA adapter has rank {need}; vLLM serves ranks up to {LORA_RANKS[-1]}")


def server_env(flavor: str, lora: bool = False) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # lmlang's tree must not shadow the venv's packages
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if lora:
        # Adapters declared after the server started (another script in the
        # process, the REPL) load through POST /v1/load_lora_adapter. The
        # server listens on 127.0.0.1 only.
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if flavor == "cpu":
        for k, v in CPU_ENV.items():
            env.setdefault(k, v)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(server: ManagedServer, timeout: float) -> None:
    """Poll /health, then /v1/models until the served name is listed."""
    deadline = time.monotonic() + timeout
    root = f"http://127.0.0.1:{server.port}"
    assert server.process is not None  # start_server waits only after Popen
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ServerStartError(
                f"vLLM exited with code {code} while starting '{server.name}'; log: {server.log_path}",
                hint=log_tail(server.log_path),
            )
        if _get(root + "/health") is not None:
            models = _get(root + "/v1/models")
            try:
                ids = {m["id"] for m in json.loads(models or "{}").get("data", [])}
            except (ValueError, TypeError, KeyError):
                ids = set()
            if server.name in ids:
                return
        time.sleep(1.0)
    raise ServerStartError(
        f"vLLM did not become healthy within {timeout:g} s; log: {server.log_path}", hint=log_tail(server.log_path)
    )


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode("utf-8", errors="replace") if resp.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "last lines of the server log:\n" + "\n".join("    " + line for line in text[-lines:])


def _prune_logs(folder: Path) -> None:
    logs = sorted(folder.glob("vllm-*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-KEEP_LOGS]:
        try:
            old.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------- orphans
# atexit does not run when lmlang is killed (SIGKILL, a test timeout, SIGTERM without a
# handler), and the server lives in its own process group, so it would outlive us with
# its ~4.3 GB. Each server is recorded in cache_dir("servers"); the next start stops
# those whose owner is gone (after checking the pid still runs the vLLM server module).


def _record(pid: int) -> Path:
    return cache_dir("servers") / f"{pid}.json"


def _remember(server: ManagedServer) -> None:
    assert server.pid is not None  # recorded right after Popen
    data = {"server_pid": server.pid, "owner_pid": os.getpid(), "port": server.port, "log": str(server.log_path)}
    _record(server.pid).write_text(json.dumps(data))


def _forget(pid: int | None) -> None:
    if pid is not None:
        try:
            _record(pid).unlink()
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def _runs_server(pid: int) -> bool:
    from .vllm_env import SERVER_MODULE

    try:
        return SERVER_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill_group(pid: int, grace: float, wait) -> None:
    """SIGTERM the group led by `pid`, SIGKILL after `grace` s; `wait(timeout=)` waits for it."""
    for sig, seconds in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        try:
            wait(timeout=seconds)
            return
        except (subprocess.TimeoutExpired, TimeoutError):
            continue


def _wait_gone(pid: int):
    def wait(timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.2)

    return wait


def reap_orphans(progress: bool = True) -> list[int]:
    """Stop recorded servers whose owning process has died; returns their pids."""
    reaped = []
    for rec in cache_dir("servers").glob("*.json"):
        try:
            data = json.loads(rec.read_text())
            pid, owner = int(data["server_pid"]), int(data["owner_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            rec.unlink(missing_ok=True)
            continue
        if _pid_alive(owner):
            continue
        if _pid_alive(pid) and _runs_server(pid):
            _say(progress, f"stopping an orphaned vLLM server (pid {pid}, port {data.get('port')})")
            _kill_group(pid, 10.0, _wait_gone(pid))
            reaped.append(pid)
        rec.unlink(missing_ok=True)
    return reaped
