"""Minimal safetensors reader/writer (no `safetensors` package needed).

File = 8-byte little-endian header length N, N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}} (space-padded to a multiple of 8),
then the tensor data, contiguous, little-endian, in header order.
"""
import json
import struct

import numpy as np
import torch

_DT = {"F32": (torch.float32, 4), "F64": (torch.float64, 8), "BF16": (torch.bfloat16, 2), "F16": (torch.float16, 2),
       "I32": (torch.int32, 4), "I64": (torch.int64, 8)}
_NAME = {v[0]: k for k, v in _DT.items()}


def _raw_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()


def save(path, tensors, metadata=None):
    """tensors: dict name -> torch tensor (dtype among F32/F64/BF16/F16/I32/I64), written in dict order."""
    header = {}
    blobs = []
    off = 0
    for name, t in tensors.items():
        b = _raw_bytes(t)
        header[name] = {"dtype": _NAME[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata is not None:
        header = {"__metadata__": metadata, **header}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load(path):
    """dict name -> torch tensor (in the stored dtype)."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, size = _DT[info["dtype"]]
        b, e = info["data_offsets"]
        buf = data[base + b: base + e]
        if dt == torch.bfloat16:
            arr = np.frombuffer(buf, dtype="<i2").copy()
            t = torch.from_numpy(arr).view(torch.bfloat16)
        else:
            arr = np.frombuffer(buf, dtype=torch.empty(0, dtype=dt).numpy().dtype.newbyteorder("<")).copy()
            t = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")))
        out[name] = t.reshape(info["shape"])
    return out
