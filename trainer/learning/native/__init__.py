"""The meta generator's GRU windows in C (``gru.c``), built on first use.

A block of rows goes through every step of a window with its gates in cache,
where eager torch makes ~20 passes over memory a step: the generator's
training, state carry and generation run several times faster. The library
is compiled with the machine's C compiler (``$CC``, else ``cc``) into
``$XDG_CACHE_HOME/asmg/native`` (``~/.cache/...``), keyed by the source, the
compiler and the CPU's features, so each machine builds its own once. Without
a compiler :func:`library` is None and the generator runs the same steps in
torch (as it does with ``ASMG_NATIVE_KERNELS=false``, see trainer/core/settings.py).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("gru.c")
MAX_HIDDEN = 16  # DMAX in gru.c
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-shared", "-fPIC")


def _cpu_features() -> bytes:
    """The CPU's feature flags: a library built with -march=native runs only where they match."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.encode()
    except OSError:
        pass
    return os.uname().machine.encode()


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [*shlex.split(compiler), *FLAGS, "-o", str(built), str(SOURCE)]  # $CC may carry flags
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(built, target)  # whole or not at all, with other processes building the same


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot be had (logged once)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found: the meta generator's GRU runs in torch (several times slower)")
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + compiler.encode() + " ".join(FLAGS).encode() + _cpu_features())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asmg" / "native"
    target = cache / f"gru-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            started = time.perf_counter()
            _build(compiler, target)
            log.info("built the GRU kernels with %s in %.1f s: %s", compiler, time.perf_counter() - started, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        log.warning("building %s failed, the meta generator's GRU runs in torch: %s", SOURCE.name, detail[-500:])
        return None
    lib.gru_window_forward.restype = None
    lib.gru_window_backward.restype = None
    return lib


def _pointer(t: Tensor) -> ctypes.c_void_p:
    if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError("the GRU kernels take contiguous float32 CPU tensors")
    return ctypes.c_void_p(t.data_ptr())


def _built() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError("the GRU kernels are not built here (see the warning logged by trainer.learning.native)")
    return lib


def window_forward(per_row: bool, x: Tensor, h0: Tensor, weights: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """States ``[T+1, C, d, R]`` and read-outs ``[T, C, R]`` of a window (layouts in gru.c)."""
    steps, cols, rows = x.shape
    hidden = h0.shape[1]
    states = x.new_empty(steps + 1, cols, hidden, rows)
    reads = x.new_empty(steps, cols, rows)
    dims = [ctypes.c_long(v) for v in (steps, cols, rows, hidden)]
    _built().gru_window_forward(ctypes.c_int(per_row), *dims, *(_pointer(t) for t in (x, h0, *weights, states, reads)))
    return states, reads


def window_backward(
    per_row: bool,
    x: Tensor,
    states: Tensor,
    weights: tuple[Tensor, ...],
    d_reads: Tensor,
    inputs_too: bool = False,
) -> tuple[tuple[Tensor, ...], Tensor | None, Tensor | None]:
    """Gradients of the six weights (``weights``' layouts) for read-out gradients
    ``d_reads``, and with ``inputs_too`` those of ``x`` and of the initial states."""
    steps, cols, rows = x.shape
    hidden = states.shape[2]
    grads = tuple(torch.zeros_like(w) for w in weights)
    d_x = torch.empty_like(x) if inputs_too else None
    d_h0 = torch.empty_like(states[0]) if inputs_too else None
    dims = [ctypes.c_long(v) for v in (steps, cols, rows, hidden)]
    _built().gru_window_backward(
        ctypes.c_int(per_row),
        *dims,
        *(_pointer(t) for t in (x, states, *weights[:5], d_reads, *grads)),
        *(None if t is None else _pointer(t) for t in (d_x, d_h0)),
    )
    return grads, d_x, d_h0
