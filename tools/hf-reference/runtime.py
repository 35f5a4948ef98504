"""The reference runtime: transformers and huggingface_hub sources extracted from git at pinned tags, plus stubs.

Layout of the runtime folder (default .cache/hf-reference/, gitignored):
  transformers/src/transformers      git archive of TRANSFORMERS_TAG (commit checked against TRANSFORMERS_COMMIT)
  huggingface_hub/src/huggingface_hub  git archive of HUB_TAG
  stubs/                             safetensors and tokenizers stand-ins + *.dist-info metadata (see below)
  READY                              the commits extracted (re-extraction happens when it differs)
"""
import os
import shutil
import subprocess

TRANSFORMERS_TAG = "v5.2.0"
TRANSFORMERS_COMMIT = "7d9754a05193eb79b1d86aa744b622b8068008cd"
HUB_TAG = "v1.4.1"

# transformers checks these distributions' versions at import time. safetensors and tokenizers are compiled
# packages Debian does not ship: the stubs below satisfy the imports; no code path the generator uses calls them
# (weights are written and read by st.py). torch's metadata is raised to 2.4.0 because transformers disables
# PyTorch below 2.4; shims.py adds what the eager paths need from newer torch.
FAKE_DISTRIBUTIONS = {"safetensors": "0.4.5", "tokenizers": "0.22.1", "huggingface_hub": "1.4.1", "torch": "2.4.0"}

SAFETENSORS_STUB = '''"""Stand-in for the safetensors package: imported by transformers, never used by the generator."""
def safe_open(*args, **kwargs):
    raise NotImplementedError("safetensors is stubbed in the reference runtime (use tools/hf-reference/st.py)")
'''
SAFETENSORS_TORCH_STUB = '''"""Stand-in for safetensors.torch: storage helpers transformers imports, everything else refuses."""
def storage_ptr(tensor):
    return tensor.storage().data_ptr()


def storage_size(tensor):
    return tensor.storage().nbytes()


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def refuse(*args, **kwargs):
        raise NotImplementedError(f"safetensors.torch.{name} is stubbed in the reference runtime")
    return refuse
'''
TOKENIZERS_STUB = '''"""Stand-in for the tokenizers package: transformers imports names from it; the generator never tokenizes."""
import sys
import types


class _Refuse:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("tokenizers is stubbed in the reference runtime")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (_Refuse,), {})


for _sub in ("decoders", "normalizers", "pre_tokenizers", "processors", "models", "trainers", "implementations"):
    _module = types.ModuleType(f"tokenizers.{_sub}")
    _module.__getattr__ = __getattr__
    sys.modules[f"tokenizers.{_sub}"] = _module
    globals()[_sub] = _module
'''


def git(git_dir, *args, **kw):
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True, capture_output=True, **kw).stdout


def extract(git_dir, tag, path, dest):
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    archive = git(git_dir, "archive", tag, path)
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def prepare(runtime_dir, transformers_git, hub_git):
    """Extracts the pinned sources (once) and writes the stubs; returns runtime_dir."""
    commit = git(transformers_git, "rev-parse", TRANSFORMERS_TAG + "^{commit}", text=True).strip()
    if commit != TRANSFORMERS_COMMIT:
        raise SystemExit(f"{transformers_git}: tag {TRANSFORMERS_TAG} is {commit}, expected upstream's "
                         f"{TRANSFORMERS_COMMIT}")
    hub_commit = git(hub_git, "rev-parse", HUB_TAG + "^{commit}", text=True).strip()
    stamp = f"transformers {TRANSFORMERS_TAG} {commit}\nhuggingface_hub {HUB_TAG} {hub_commit}\n"
    ready = os.path.join(runtime_dir, "READY")
    if os.path.exists(ready) and open(ready).read() == stamp:
        return runtime_dir
    os.makedirs(runtime_dir, exist_ok=True)
    extract(transformers_git, TRANSFORMERS_TAG, "src/transformers", os.path.join(runtime_dir, "transformers"))
    extract(hub_git, HUB_TAG, "src/huggingface_hub", os.path.join(runtime_dir, "huggingface_hub"))
    stubs = os.path.join(runtime_dir, "stubs")
    if os.path.exists(stubs):
        shutil.rmtree(stubs)
    write(os.path.join(stubs, "safetensors", "__init__.py"), SAFETENSORS_STUB)
    write(os.path.join(stubs, "safetensors", "torch.py"), SAFETENSORS_TORCH_STUB)
    write(os.path.join(stubs, "tokenizers", "__init__.py"), TOKENIZERS_STUB)
    for name, version in FAKE_DISTRIBUTIONS.items():
        write(os.path.join(stubs, f"{name}-{version}.dist-info", "METADATA"),
              f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    write(ready, stamp)
    return runtime_dir
