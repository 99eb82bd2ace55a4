"""What the benchmarks share: a free port, a redis-server of their own, ``asmg serve``
started and awaited, and a wrk run with the shared peer harness's load.lua."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(os.environ.get("ASMG_BENCH_DIR", ROOT.parent / "shared" / "bench"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_redis(directory: Path, appendfsync: str | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """A redis-server on a free loopback port with its files in ``directory``; with ``appendfsync``,
    AOF on at that policy, else off. Returns its URL once it accepts connections."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    command += ["--appendonly", "yes", "--appendfsync", appendfsync] if appendfsync else ["--appendonly", "no"]
    process = subprocess.Popen([*command, "--save", ""], stdout=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return f"redis://127.0.0.1:{port}/0", process
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def harness_bodies(scratch: Path) -> Path:
    """The harness's seeded request bodies, converted to our schema, in ``scratch``."""
    python = sys.executable
    if not (BENCH / "model.pt").exists():  # tools.py gen scores reference answers with it
        subprocess.run([python, "model.py"], cwd=BENCH, check=True, capture_output=True)
    subprocess.run([python, str(BENCH / "tools.py"), "gen", str(scratch / "data")], check=True, capture_output=True)
    bodies = scratch / "bodies.jsonl"
    convert = [python, str(BENCH / "tools.py"), "convert", str(scratch / "data" / "bodies.jsonl"), str(bodies)]
    subprocess.run(convert, check=True, capture_output=True)
    return bodies


def start_server(env: dict[str, str], timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """``asmg serve`` with ``env`` (which names ASMG_PORT), once it answers /readyz with 200."""
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{env['ASMG_PORT']}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"asmg serve exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.terminate()
    server.wait(30)
    raise RuntimeError(f"asmg serve was not ready within {timeout:g}s")


def wrk(url: str, conc: int, seconds: int, bodies: Path, out: Path) -> dict[str, object]:
    """One wrk run POSTing ``bodies`` round-robin; its JSON summary (latencies in µs)."""
    command = ["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--timeout", "10s", "-s", str(BENCH / "load.lua")]
    env = {**os.environ, "WRK_OUT": str(out)}
    subprocess.run([*command, url, "--", str(bodies)], env=env, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, object] = json.loads(out.read_text())
    return result
