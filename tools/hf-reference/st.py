"""safetensors files written and read by hand (the runtime has no safetensors package).

Writes tensors in the given order, data tiled contiguously, header space-padded to 8 bytes; reads back with a
check that the offsets tile the data exactly. Dtypes: F32, F16, BF16, I32, F8_E4M3 (read: also U8).
"""
import json
import struct

import numpy as np
import torch

TORCH_DTYPE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def f8_e4m3_encode(x):
    """float64 tensor (values already representable in E4M3FN, see f8_e4m3_round) -> uint8 codes."""
    table = f8_e4m3_table()
    code = {float(v): c for c, v in enumerate(table) if np.isfinite(v) and c != 0x80}  # +0 for zeros
    try:
        return np.array([code[float(v)] for v in x.detach().to(torch.float64).numpy().ravel()], dtype=np.uint8)
    except KeyError as e:
        raise ValueError(f"value {e} is not representable in F8_E4M3") from None


_F8 = None


def f8_e4m3_table():
    """The 256 E4M3FN code points as float64 (0x7F / 0xFF are NaN)."""
    global _F8
    if _F8 is None:
        t = np.zeros(256)
        for c in range(256):
            s, e, m = c >> 7, (c >> 3) & 0xF, c & 7
            if e == 0xF and m == 7:
                v = np.nan
            elif e == 0:
                v = m / 8 * 2.0 ** -6
            else:
                v = (1 + m / 8) * 2.0 ** (e - 7)
            t[c] = -v if s else v
        _F8 = t
    return _F8


def f8_e4m3_round(x):
    """Rounds float64 values to the nearest E4M3FN value (ties to even code), saturating at ±448."""
    t = f8_e4m3_table()
    pos = np.array(sorted(v for v in t[:127] if np.isfinite(v)))
    a = x.detach().to(torch.float64).numpy()
    mag = np.clip(np.abs(a), 0, 448.0)
    i = np.clip(np.searchsorted(pos, mag), 1, len(pos) - 1)
    lo, hi = pos[i - 1], pos[i]
    pick_hi = (mag - lo > hi - mag) | ((mag - lo == hi - mag) & (i % 2 == 0))
    r = np.where(pick_hi, hi, lo)
    return torch.from_numpy(np.sign(a) * r).to(x.dtype)


def tensor_bytes(t, dtype):
    if dtype == "I32":
        return np.ascontiguousarray(t.numpy().astype("<i4")).tobytes()
    if dtype == "U8":
        return np.ascontiguousarray(t.numpy().astype(np.uint8)).tobytes()
    if dtype == "F8_E4M3":
        return f8_e4m3_encode(t).tobytes()
    tt = (t.detach() + 0.0).to(TORCH_DTYPE[dtype]).contiguous()  # + 0.0: no negative zeros
    if dtype == "BF16":
        return tt.view(torch.int16).numpy().astype("<i2").tobytes()
    return tt.numpy().astype("<f2" if dtype == "F16" else "<f4").tobytes()


def write(path, items, metadata):
    """items: [(name, dtype, shape, bytes)] written in order."""
    header = {"__metadata__": metadata}
    off = 0
    for name, dtype, shape, data in items:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for item in items:
            f.write(item[3])


def read(path, float_type=np.float64):
    """-> {name: (dtype, float tensor (float64 unless float_type), int64 (I32) or uint8 (U8))}; checks that the
    offsets tile the data."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    data = buf[8 + n:]
    header.pop("__metadata__", None)
    pos = 0
    for b, e in sorted(tuple(v["data_offsets"]) for v in header.values()):
        assert b == pos and e >= b, (path, b, pos)
        pos = e
    assert pos == len(data), (path, pos, len(data))
    out = {}
    for name, v in header.items():
        b, e = v["data_offsets"]
        raw = data[b:e]
        dt = v["dtype"]
        if dt == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).astype(float_type)
        elif dt == "F16":
            a = np.frombuffer(raw, "<f2").astype(float_type)
        elif dt == "F32":
            a = np.frombuffer(raw, "<f4").astype(float_type)
        elif dt == "F8_E4M3":
            a = f8_e4m3_table()[np.frombuffer(raw, np.uint8)].astype(float_type)
        elif dt == "I32":
            a = np.frombuffer(raw, "<i4").astype(np.int64)
        elif dt == "U8":  # raw bytes (MXFP4 blocks and scales) stay uint8
            a = np.frombuffer(raw, np.uint8).copy()
        else:
            raise ValueError(f"{path}: {name}: dtype {dt}")
        assert a.size == int(np.prod(v["shape"])), name
        out[name] = (dt, torch.from_numpy(a if a.base is None else a.copy()).reshape(v["shape"]))
    return out


class Lazy:
    """The tensors of several safetensors files, memory-mapped and converted one at a time (full-size checkpoints)."""

    def __init__(self, paths):
        self.where = {}
        for path in paths:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n).decode("utf-8"))
            header.pop("__metadata__", None)
            mm = np.memmap(path, dtype=np.uint8, mode="r")
            for name, v in header.items():
                b, e = v["data_offsets"]
                self.where[name] = (v["dtype"], v["shape"], mm[8 + n + b:8 + n + e])

    def raw(self, name):
        """uint8 array of a U8 tensor, shaped."""
        dt, shape, raw = self.where[name]
        assert dt == "U8", name
        return raw.reshape(shape)

    def tensor(self, name, float_type=np.float32):
        dt, shape, raw = self.where[name]
        if dt == "BF16":
            a = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).astype(float_type)
        elif dt == "F16":
            a = raw.view("<f2").astype(float_type)
        elif dt == "F32":
            a = raw.view("<f4").astype(float_type)
        else:
            raise ValueError(f"{name}: dtype {dt}")
        return torch.from_numpy(a).reshape(shape)
