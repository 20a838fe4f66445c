"""Tensors on the wire: little-endian f32 bytes plus a shape."""

from __future__ import annotations

import math

import numpy as np

from . import sidecar_pb2 as pb
from .errors import BadRequest

F32_LE = np.dtype("<f4")


def decode(msg: "pb.Tensor", name: str, rank: int | None = None) -> np.ndarray:
    """A writable float32 array from a `Tensor` message."""
    shape = tuple(int(d) for d in msg.shape)
    if rank is not None and len(shape) != rank:
        raise BadRequest(f"{name}: expected a rank-{rank} tensor, got shape {list(shape)}")
    n = math.prod(shape)
    if len(msg.data) != 4 * n:
        raise BadRequest(f"{name}: shape {list(shape)} needs {4 * n} bytes of f32, got {len(msg.data)}")
    # copy: np.frombuffer is read-only and torch.from_numpy wants a writable array
    return np.frombuffer(msg.data, dtype=F32_LE).reshape(shape).astype(np.float32, copy=True)


def encode(arr: np.ndarray) -> "pb.Tensor":
    arr = np.ascontiguousarray(arr, dtype=F32_LE)
    return pb.Tensor(shape=list(arr.shape), data=arr.tobytes())


def decode_ids(msg: "pb.EncodeTextRequest") -> np.ndarray:
    shape = tuple(int(d) for d in msg.shape)
    if len(shape) != 2:
        raise BadRequest(f"input_ids: expected shape [batch, len], got {list(shape)}")
    if len(msg.ids) != math.prod(shape):
        raise BadRequest(f"input_ids: shape {list(shape)} needs {math.prod(shape)} ids, got {len(msg.ids)}")
    return np.asarray(msg.ids, dtype=np.int64).reshape(shape)
