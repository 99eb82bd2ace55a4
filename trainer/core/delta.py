"""Deltas: a version stored as the rows it changed on top of the version before it.

A period of training touches the embedding rows of the ids it saw; with large
tables that is a small share of them. A delta holds, for each embedding table,
the rows whose values differ from its base (the previous version) in any bit,
with their indices, and every other tensor whole. Applying it to the base
gives the new model exactly.

Every version names the **digest** of the whole model it stands for
(:func:`model_digest`): sha256 over each tensor's name, dtype, shape and the
sha256 of its raw bytes, in name order. A delta carries its base's digest and
its result's; a replica that applies one hashes the result and serves it only
when the digests match, so a wrong base, a bad delta or a bug in applying it
is never served. Per-tensor digests make a tensor no delta touched free to
verify: its digest is its base's.

Blob layout (``torch.save``, loaded with ``weights_only=True``): a full
snapshot is a checkpoint (:func:`trainer.core.model.checkpoint_bytes`) whose
``meta`` may hold ``digests``, the per-tensor digests; a delta is a dict with
``"delta": DELTA_FORMAT``, ``config``, ``meta``, ``base`` (version number),
``base_digest``, ``digest`` and ``digests`` (of the result: the model, every tensor), ``rows``
(``{table: {"index": int32 [n], "values": [n, cols]}}``, indices strictly
increasing) and ``dense`` (``{name: tensor}``).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from trainer.core.config import ModelConfig
from trainer.core.model import EMBEDDING_TABLES, Params

DELTA_FORMAT = 1
INDEX_DTYPE = torch.int32  # row numbers of tables up to 2^31 rows


class DeltaError(ValueError):
    """A delta that does not fit its base, or does not give the model it names."""


def tensor_digest(tensor: Tensor) -> str:
    """sha256 of ``tensor``'s raw bytes (C order)."""
    data = tensor.detach().contiguous()
    return hashlib.sha256(data.reshape(-1).view(torch.uint8).numpy().data).hexdigest()


def tensor_digests(params: Mapping[str, Tensor], known: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every tensor's digest, taken from ``known`` where it has one."""
    known = known or {}
    return {name: known.get(name) or tensor_digest(value) for name, value in params.items()}


def combine(params: Mapping[str, Tensor], digests: Mapping[str, str]) -> str:
    """The model digest from its tensors' digests (names, dtypes and shapes from ``params``)."""
    whole = hashlib.sha256()
    for name in sorted(params):
        value = params[name]
        whole.update(f"{name}\0{value.dtype}\0{tuple(value.shape)}\0{digests[name]}\n".encode())
    return whole.hexdigest()


def model_digest(params: Mapping[str, Tensor], known: Mapping[str, str] | None = None) -> str:
    return combine(params, tensor_digests(params, known))


@dataclass(frozen=True)
class Delta:
    config: ModelConfig
    meta: dict[str, Any]
    base: int
    base_digest: str
    digest: str  # of the resulting model
    digests: dict[str, str]  # of the resulting model's tensors, every one
    rows: dict[str, tuple[Tensor, Tensor]]  # table → (index [n], values [n, cols])
    dense: dict[str, Tensor]


def changed_rows(old: Tensor, new: Tensor) -> Tensor:
    """Indices of the rows of ``new`` that differ from ``old`` in any bit (NaN against NaN counts as equal
    only where the bits are equal), ascending."""
    if old.dtype.is_floating_point:
        old_bits, new_bits = _bits(old), _bits(new)
        return (old_bits != new_bits).reshape(len(new), -1).any(1).nonzero().squeeze(1)
    return (old != new).reshape(len(new), -1).any(1).nonzero().squeeze(1)


def _bits(tensor: Tensor) -> Tensor:
    integer = {8: torch.int64, 4: torch.int32, 2: torch.int16}[tensor.element_size()]
    return tensor.contiguous().view(integer)


def row_tables(config: ModelConfig) -> tuple[str, ...]:
    """The tensors a delta stores by rows: the embedding tables of this kind of model."""
    return tuple(name for name in EMBEDDING_TABLES if not (config.kind == "mf" and name == "cat_emb"))


def delta_rows(base: Params, params: Params, config: ModelConfig) -> dict[str, Tensor] | None:
    """Each table's changed rows, or None when ``params`` cannot be a delta of ``base`` (other tensors or shapes)."""
    if base.keys() != params.keys():
        return None
    if any(base[n].shape != params[n].shape or base[n].dtype != params[n].dtype for n in params):
        return None
    return {name: changed_rows(base[name], params[name]) for name in row_tables(config) if name in params}


def delta_size(params: Params, rows: Mapping[str, Tensor]) -> int:
    """Bytes of tensor data a delta with ``rows`` changed holds (its blob adds a few kB of framing)."""
    size = 0
    for name, value in params.items():
        if name in rows:
            row_bytes = value[0].numel() * value.element_size() if len(value) else 0
            size += len(rows[name]) * (row_bytes + INDEX_DTYPE.itemsize)
        else:
            size += value.numel() * value.element_size()
    return size


def full_size(params: Params) -> int:
    return sum(value.numel() * value.element_size() for value in params.values())


def delta_bytes(
    config: ModelConfig,
    params: Params,
    rows: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    base: int,
    base_digest: str,
    digests: Mapping[str, str],
) -> bytes:
    """The delta blob of ``params`` whose tables changed at ``rows`` against version ``base``."""
    state = {
        "delta": DELTA_FORMAT,
        "config": asdict(config),
        "meta": dict(meta),
        "base": int(base),
        "base_digest": base_digest,
        "digest": combine(params, digests),
        "digests": dict(digests),
        "rows": {
            name: {"index": index.to(INDEX_DTYPE), "values": params[name].index_select(0, index)}
            for name, index in rows.items()
        },
        "dense": {name: value for name, value in params.items() if name not in rows},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def read_blob(blob: bytes) -> tuple[ModelConfig, Params, dict[str, Any]] | Delta:
    """A version's blob: a full checkpoint ``(config, params, meta)`` or a :class:`Delta`."""
    state = torch.load(io.BytesIO(blob), weights_only=True)
    config = ModelConfig(**state["config"])
    if "delta" not in state:
        return config, state["params"], state["meta"]
    if state["delta"] != DELTA_FORMAT:
        raise DeltaError(f"unknown delta format {state['delta']!r}")
    rows = {name: (part["index"], part["values"]) for name, part in state["rows"].items()}
    return Delta(
        config,
        dict(state["meta"]),
        int(state["base"]),
        str(state["base_digest"]),
        str(state["digest"]),
        dict(state["digests"]),
        rows,
        dict(state["dense"]),
    )


def apply_delta(base: Params, delta: Delta, owned: Collection[str] = ()) -> tuple[Params, set[str]]:
    """``delta`` applied to ``base`` and the names of the tensors it replaced. ``base`` is never changed
    (a table the delta touches is copied first, the others are shared), except its tensors named in
    ``owned``, the caller's own copies, which are written in place. Checks the delta's structure and that
    every value it brings is finite; not the result's digest (:func:`check_digest`)."""
    if set(delta.rows) | set(delta.dense) != set(base) or set(delta.rows) & set(delta.dense):
        raise DeltaError(f"the delta's tensors {sorted(delta.rows)} + {sorted(delta.dense)} are not the model's")
    if set(delta.digests) != set(base):
        raise DeltaError("the delta's digests do not name the model's tensors")
    out: Params = {}
    touched: set[str] = set()
    for name, value in delta.dense.items():
        if value.shape != base[name].shape or value.dtype != base[name].dtype:
            raise DeltaError(f"{name}: shape {tuple(value.shape)} {value.dtype} differs from the base's")
        if not bool(torch.isfinite(value).all()):
            raise DeltaError(f"{name}: NaN or infinity")
        out[name] = value
        touched.add(name)
    for name, (index, values) in delta.rows.items():
        table = base[name]
        if index.dim() != 1 or index.dtype != INDEX_DTYPE or values.dtype != table.dtype:
            raise DeltaError(f"{name}: malformed rows")
        if values.shape != (len(index), *table.shape[1:]):
            raise DeltaError(f"{name}: rows of shape {tuple(values.shape)} for a table of {tuple(table.shape)}")
        if not len(index):
            out[name] = table
            continue
        index = index.long()
        if int(index[0]) < 0 or int(index[-1]) >= len(table) or (len(index) > 1 and not bool((index.diff() > 0).all())):
            raise DeltaError(f"{name}: row indices out of range or not strictly increasing")
        if not bool(torch.isfinite(values).all()):
            raise DeltaError(f"{name}: NaN or infinity")
        out[name] = (table if name in owned else table.clone()).index_copy_(0, index, values)
        touched.add(name)
    return out, touched


def check_digest(
    params: Params, touched: set[str], known: Mapping[str, str] | None, expected: Mapping[str, str], digest: str
) -> dict[str, str]:
    """The per-tensor digests of ``params``, only if they give ``digest``: a tensor in ``touched`` is hashed,
    another keeps its ``known`` digest (hashed when unknown)."""
    known = known or {}
    digests = {
        name: tensor_digest(value) if name in touched or name not in known else known[name]
        for name, value in params.items()
    }
    if digests != dict(expected) or combine(params, digests) != digest:
        raise DeltaError("the model the delta gives does not match its digest")
    return digests
