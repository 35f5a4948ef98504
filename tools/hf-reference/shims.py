"""Runs transformers v5.2.0's modeling code on Debian's PyTorch 1.13 (CPU).

Importing this module (before transformers) does three things, each needed only because the reference runtime is
an old torch without transformers' packaged dependencies:

1. sys.path: the runtime folder (see runtime.py) with transformers and huggingface_hub extracted from git, plus
   small stub packages for the two compiled dependencies Debian lacks (safetensors, tokenizers) and .dist-info
   metadata so transformers' import-time version checks pass. Checkpoints are written and read by our own
   safetensors code (st.py), never by the stubs.
2. torch >= 2 names the import path and the eager forward touch, added to torch 1.13 (listed in SHIMS below).
3. Nothing else: the modeling code itself runs unmodified. Workarounds of transformers bugs live in generate.py,
   each documented where it is applied.
"""
import contextlib
import os
import sys
import types

import torch

SHIMS = []


def shim(what):
    SHIMS.append(what)


def install(runtime_dir):
    """Puts the runtime first on sys.path and patches torch; call before importing transformers."""
    for p in (os.path.join(runtime_dir, "stubs"), os.path.join(runtime_dir, "transformers", "src"),
              os.path.join(runtime_dir, "huggingface_hub", "src")):
        if p not in sys.path:
            sys.path.insert(0, p)

    # transformers imports torch.distributed.tensor when distributed is available; the reference is one process.
    torch.distributed.is_available = lambda: False
    shim("torch.distributed.is_available() -> False (single process; avoids torch.distributed.tensor)")

    import torch.utils._pytree as pytree
    if not hasattr(pytree, "register_pytree_node"):
        pytree.register_pytree_node = (lambda typ, flatten, unflatten, serialized_type_name=None, **_:
                                       pytree._register_pytree_node(typ, flatten, unflatten))
        shim("torch.utils._pytree.register_pytree_node -> _register_pytree_node")

    # torch >= 2.1 accepts @torch.no_grad without parentheses.
    try:
        torch.no_grad(lambda: None)
    except TypeError:
        base = torch.no_grad

        class no_grad(base):
            def __new__(cls, fn=None):
                if callable(fn):
                    return base()(fn)
                return super().__new__(cls)

            def __init__(self, fn=None):
                super().__init__()

        torch.no_grad = no_grad
        shim("torch.no_grad usable as a bare decorator")

    # torch.compiler (torch >= 2.1): the reference never compiles.
    if not hasattr(torch, "compiler"):
        def disable(fn=None, recursive=True):
            return fn if fn is not None else (lambda f: f)

        torch.compiler = types.SimpleNamespace(disable=disable, allow_in_graph=lambda fn: fn,
                                               is_compiling=lambda: False, is_exporting=lambda: False,
                                               reset=lambda: None)
        shim("torch.compiler namespace (disable/allow_in_graph are identity, is_compiling/is_exporting False)")

    if not hasattr(torch, "get_default_device"):
        torch.get_default_device = lambda: torch.device("cpu")
        shim("torch.get_default_device() -> cpu")

    # torch.nn.init.*_(..., generator=) (torch >= 2.2): weights are overwritten by the generator anyway.
    import inspect
    for name in dir(torch.nn.init):
        fn = getattr(torch.nn.init, name)
        if name.endswith("_") and not name.startswith("_") and callable(fn) and \
                "generator" not in inspect.signature(fn).parameters:
            def wrapped(*a, _fn=fn, generator=None, **k):
                return _fn(*a, **k)
            setattr(torch.nn.init, name, wrapped)
    shim("torch.nn.init.*_ accept (and ignore) generator=")

    # torch.is_autocast_enabled(device_type) (torch >= 2.4): the reference never autocasts.
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:
        _is_autocast = torch.is_autocast_enabled
        torch.is_autocast_enabled = lambda device_type=None: _is_autocast()
        shim("torch.is_autocast_enabled(device_type)")

    # dtypes torch 1.13 lacks: only named in transformers' dtype tables, never used by the float paths we run.
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float4_e2m1fn_x2", "uint16", "uint32", "uint64"):
        if not hasattr(torch, name):
            setattr(torch, name, types.SimpleNamespace(name=name, is_floating_point=False, itemsize=1))
            shim(f"torch.{name} placeholder (dtype table entry only)")


@contextlib.contextmanager
def float64_throughout():
    """transformers keeps RMSNorm, the RoPE tables and the router softmax in float32 even in a float64 model
    (`.to(torch.float32)`, `dtype=torch.float`, `.float()`). Inside this context every such request yields float64,
    so the whole forward is float64 and autograd agrees with finite differences to ~1e-9. The generator compares
    against a run without it (transformers' own float32 islands) on every case."""
    saved = (torch.float32, torch.float, torch.Tensor.float)
    torch.float32 = torch.float = torch.float64
    torch.Tensor.float = torch.Tensor.double
    try:
        yield
    finally:
        torch.float32, torch.float, torch.Tensor.float = saved
