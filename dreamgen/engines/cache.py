"""The engine cache: built graphs and engines under `home()/engines/<backend>/<part>-<precision>-<key>/`, each
with a `manifest.json` beside it that says what it was built from. Checked at every load.

The key is the sha256 of everything an engine depends on, and of nothing else:
    onnx      model fingerprint, part, precision, opset, exporter version, flavour (onnxruntime | portable)
    tensorrt  ONNX sha256 (external data included), part, precision, TensorRT version, GPU compute capability,
              optimization-profile shapes, builder flags
A manifest that is unreadable, or was written for other inputs, or whose files are missing or changed, makes the
engine unusable: it is rebuilt, or with no_build an EngineError says why.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..errors import EngineError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
CHUNK = 1024 * 1024


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def sha256_files(paths: list[Path]) -> str:
    """One digest over the files' bytes in the order given (a graph, then its external data)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One engine's identity. `keyed` holds everything it depends on; `label` (the model's name) is for people."""

    backend: str  # "onnx" | "tensorrt"
    part: str
    precision: str
    keyed: dict = field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        # JSON-normalise (tuples -> lists), so what a manifest stores compares equal to what is asked for.
        object.__setattr__(self, "keyed", json.loads(canonical(self.keyed)))

    @property
    def key_inputs(self) -> dict:
        return {"backend": self.backend, "part": self.part, "precision": self.precision, **self.keyed}

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical(self.key_inputs).encode()).hexdigest()

    @property
    def dirname(self) -> str:
        return f"{self.part}-{self.precision}-{self.key[:16]}"

    def describe(self) -> str:
        return f"{self.backend} {self.part} ({self.precision}{', ' + self.label if self.label else ''})"


def onnx_entry(fingerprint: str, part: str, precision: str, opset: int, exporter: str, flavor: str = "portable",
               label: str = "", cut: int | None = None) -> CacheEntry:
    """cut: where a graph of the UNet's cut was cut (deepcache.SHALLOW_SKIPS), so graphs cut elsewhere never match."""
    keyed = {"model_fingerprint": fingerprint, "opset": opset, "exporter": exporter, "flavor": flavor}
    return CacheEntry("onnx", part, precision, keyed if cut is None else {**keyed, "cut": cut}, label)


def tensorrt_entry(onnx_sha256: str, part: str, precision: str, trt_version: str, compute_capability: str,
                   profiles: list, builder_flags: dict, label: str = "") -> CacheEntry:
    return CacheEntry("tensorrt", part, precision, {
        "onnx_sha256": onnx_sha256, "tensorrt_version": trt_version, "compute_capability": compute_capability,
        "profiles": profiles, "builder_flags": builder_flags}, label)


@dataclass
class CachedEngine:
    entry: CacheEntry
    path: Path  # the entry's directory
    manifest: dict
    built: bool  # built by this call (not found in the cache)

    @property
    def seconds(self) -> float:
        return self.manifest.get("build_seconds", 0.0) if self.built else 0.0

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def content_sha256(self) -> str:
        return self.manifest["content_sha256"]


class EngineCache:
    def __init__(self, root: str | Path | None = None):
        from ..settings import home

        self.root = Path(root) if root is not None else home() / "engines"

    def path(self, entry: CacheEntry) -> Path:
        return self.root / entry.backend / entry.dirname

    # -------------------------------------------------------------------------------------------- checking
    def problem(self, entry: CacheEntry, verify_files: bool = False) -> str | None:
        """Why the cached engine for `entry` cannot be used, or None when it can. verify_files re-hashes every
        file (slow for a 7B graph); otherwise sizes are checked."""
        path = self.path(entry)
        try:
            manifest = read_manifest(path)
        except FileNotFoundError:
            return "not built"
        except EngineError as e:
            return str(e)
        if manifest.get("format") != MANIFEST_FORMAT:
            return f"{path / MANIFEST} has format {manifest.get('format')!r}; this dreamgen writes {MANIFEST_FORMAT}"
        if manifest.get("key") != entry.key or manifest.get("key_inputs") != entry.key_inputs:
            difference = _first_difference(manifest.get("key_inputs"), entry.key_inputs)
            return f"{path / MANIFEST} was written for other inputs ({difference})"
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            return f"{path / MANIFEST} lists no files"
        for name, info in files.items():
            file = path / name
            if not file.is_file():
                return f"{file} is missing"
            if file.stat().st_size != info.get("bytes"):
                return f"{file} has {file.stat().st_size} bytes; the manifest says {info.get('bytes')}"
        if verify_files:
            for name, info in files.items():
                if sha256_files([path / name]) != info.get("sha256"):
                    return f"{path / name} does not match the sha256 in its manifest"
        return None

    def lookup(self, entry: CacheEntry, verify_files: bool = False) -> CachedEngine | None:
        if self.problem(entry, verify_files) is not None:
            return None
        path = self.path(entry)
        return CachedEngine(entry, path, read_manifest(path), built=False)

    # -------------------------------------------------------------------------------------------- building
    def ensure(self, entry: CacheEntry, build: Callable[[Path], dict | None], no_build: bool = False,
               verify_files: bool = False, hint: str = "") -> CachedEngine:
        """The cached engine for `entry`, built with build(directory) when it is missing or unusable.
        build writes its files into the directory it is given and may return extra manifest fields."""
        problem = self.problem(entry, verify_files)
        if problem is None:
            return CachedEngine(entry, self.path(entry), read_manifest(self.path(entry)), built=False)
        if no_build:
            raise EngineError(f"{entry.describe()} cannot be used: {problem}; "
                              f"building is turned off{'; ' + hint if hint else ''}")
        with self._lock(entry):
            # Another worker may have built it while this one waited for the lock.
            if self.problem(entry, verify_files) is None:
                return CachedEngine(entry, self.path(entry), read_manifest(self.path(entry)), built=False)
            if problem != "not built":
                log.warning("rebuilding %s: %s", entry.describe(), problem)
            return self._build(entry, build)

    def _build(self, entry: CacheEntry, build: Callable[[Path], dict | None]) -> CachedEngine:
        final = self.path(entry)
        staging = final.with_name(f".{final.name}.building-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        started = time.perf_counter()
        try:
            extra = build(staging) or {}
            files = sorted(p for p in staging.iterdir() if p.is_file() and p.name != MANIFEST)
            if not files:
                raise EngineError(f"building {entry.describe()} wrote no files")
            manifest = {
                "format": MANIFEST_FORMAT, "key": entry.key, "key_inputs": entry.key_inputs, "label": entry.label,
                "backend": entry.backend, "part": entry.part, "precision": entry.precision,
                "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256_files([p])} for p in files},
                "content_sha256": sha256_files(files),  # model.onnx sorts before model.onnx.data
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "build_seconds": round(time.perf_counter() - started, 3), **extra,
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            shutil.rmtree(final, ignore_errors=True)
            os.rename(staging, final)  # readers see the old entry or the whole new one, never half of one
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("built %s in %.1f s at %s", entry.describe(), manifest["build_seconds"], final)
        return CachedEngine(entry, final, manifest, built=True)

    @contextlib.contextmanager
    def _lock(self, entry: CacheEntry):
        """Workers that start together build each engine once: the others wait, then find it built."""
        folder = self.root / entry.backend
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f".{entry.dirname}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -------------------------------------------------------------------------------------------- listing
    def listing(self) -> list[tuple[Path, dict | None, str | None]]:
        """Every entry directory: (path, manifest or None, problem reading it or None)."""
        rows = []
        for backend_dir in sorted(p for p in self.root.glob("*") if p.is_dir()):
            for path in sorted(p for p in backend_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                try:
                    rows.append((path, read_manifest(path), None))
                except FileNotFoundError:
                    rows.append((path, None, "no manifest"))
                except EngineError as e:
                    rows.append((path, None, str(e)))
        return rows


def read_manifest(path: Path) -> dict:
    """The manifest of an entry directory; FileNotFoundError when there is none, EngineError when unreadable."""
    file = Path(path) / MANIFEST
    text = file.read_text()  # FileNotFoundError: not built
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise EngineError(f"{file} is corrupted (not JSON: {e})") from None
    if not isinstance(manifest, dict):
        raise EngineError(f"{file} is corrupted (a {type(manifest).__name__}, not an object)")
    return manifest


def _first_difference(stored, wanted: dict) -> str:
    if not isinstance(stored, dict):
        return "it records no key inputs"
    for name in sorted(set(stored) | set(wanted)):
        if stored.get(name) != wanted.get(name):
            return f"{name}: built with {_short(stored.get(name))}, wanted {_short(wanted.get(name))}"
    return "its key differs"


def _short(value) -> str:
    text = canonical(value)
    return text if len(text) <= 60 else text[:57] + "..."
