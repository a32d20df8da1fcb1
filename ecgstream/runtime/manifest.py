"""Model integrity: a sha256 manifest of model files, checked before a model is loaded.

The manifest is a plain ``sha256sum`` file (``models/SHA256SUMS``): one ``<hex digest>  <name>``
line per model, names relative to the manifest's folder. :func:`check_model` is called by
:func:`~ecgstream.runtime.scorer.make_session`, so ``score``, ``replay`` and ``run`` refuse a
model file whose bytes differ from the manifest, with an error naming the file and both hashes.

Which manifest applies to a model file:

1. ``manifest`` passed explicitly, else the ``ECGSTREAM_MODEL_MANIFEST`` environment variable:
   the model must be listed in it and match (an unlisted model is an error);
2. else a ``SHA256SUMS`` file next to the model: a listed model must match, an unlisted one is
   loaded with a warning (models trained locally are not listed until they are published);
3. else no check.

Write or refresh a manifest with ``python -m ecgstream.runtime.manifest write models/``; check
one with ``python -m ecgstream.runtime.manifest check models/SHA256SUMS`` (``sha256sum -c``
reads the same file).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from ecgstream.runtime.model_file import ModelFileError, sha256_of

__all__ = [
    "MANIFEST_NAME",
    "ENV_MANIFEST",
    "ManifestError",
    "read_manifest",
    "write_manifest",
    "find_manifest",
    "check_model",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "SHA256SUMS"
ENV_MANIFEST = "ECGSTREAM_MODEL_MANIFEST"
#: file name patterns a written manifest covers
MODEL_PATTERNS = ("*.onnx",)
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class ManifestError(ModelFileError):
    """A model file does not match its manifest, or the manifest itself is unreadable."""


def read_manifest(path: str | Path) -> dict[str, str]:
    """Name (relative to the manifest's folder) -> lowercase hex sha256, from a sha256sum file."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"model manifest {path} not found")
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line.rstrip("\r"))
        if m is None:
            raise ManifestError(
                f"{path}:{i}: expected '<64 hex digits>  <file name>', got {line[:80]!r}"
            )
        out[m.group(2)] = m.group(1).lower()
    return out


def write_manifest(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write ``SHA256SUMS`` for the model files (``*.onnx``) under ``folder``; returns its path."""
    folder = Path(folder)
    out = Path(out) if out is not None else folder / MANIFEST_NAME
    files = sorted({p for pat in MODEL_PATTERNS for p in folder.rglob(pat) if p.is_file()})
    if not files:
        raise ManifestError(f"no model files ({', '.join(MODEL_PATTERNS)}) under {folder}")
    base = out.resolve().parent
    lines = [f"{sha256_of(p)}  {os.path.relpath(p.resolve(), base)}" for p in files]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def find_manifest(
    model_path: str | Path,
    manifest: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Path | None, bool]:
    """The manifest that applies to ``model_path`` and whether it was asked for explicitly."""
    environ = os.environ if environ is None else environ
    if manifest:
        return Path(manifest), True
    if environ.get(ENV_MANIFEST):
        return Path(environ[ENV_MANIFEST]), True
    beside = Path(model_path).resolve().parent / MANIFEST_NAME
    return (beside, False) if beside.is_file() else (None, False)


def _expected(entries: dict[str, str], manifest: Path, model: Path) -> str | None:
    base = manifest.resolve().parent
    target = model.resolve()
    for name, digest in entries.items():
        if (base / name).resolve() == target:
            return digest
    same_name = [d for n, d in entries.items() if Path(n).name == model.name]
    return same_name[0] if len(same_name) == 1 else None


def check_model(
    model_path: str | Path,
    manifest: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """Check ``model_path`` against its manifest (see the module docstring).

    Returns the verified hex sha256, or None when no manifest applies (or an implicit one does
    not list the file). Raises :class:`ManifestError` on a mismatch, naming the file and both
    hashes.
    """
    model = Path(model_path)
    found, explicit = find_manifest(model, manifest, environ)
    if found is None:
        return None
    entries = read_manifest(found)
    expected = _expected(entries, found, model)
    if expected is None:
        if explicit:
            raise ManifestError(f"model file {model} is not listed in the manifest {found}")
        log.warning("model file %s is not listed in %s; loading it unchecked", model, found)
        return None
    actual = sha256_of(model)
    if actual != expected:
        raise ManifestError(
            f"model file {model} does not match the manifest {found}: expected sha256 {expected}, "
            f"file has {actual}. Replace the file, or refresh the manifest if the change is intended "
            f"(python -m ecgstream.runtime.manifest write {found.parent})"
        )
    return actual


def main(argv: list[str] | None = None) -> int:
    """``python -m ecgstream.runtime.manifest write FOLDER`` or ``check MANIFEST``."""
    p = argparse.ArgumentParser(
        prog="python -m ecgstream.runtime.manifest",
        description="Write or check the sha256 manifest of model files.\n\nexamples:\n"
        "  python -m ecgstream.runtime.manifest write models/\n"
        "  python -m ecgstream.runtime.manifest check models/SHA256SUMS",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["write", "check"])
    p.add_argument("path", type=Path, help="folder of models (write) or manifest file (check)")
    args = p.parse_args(argv)
    try:
        if args.action == "write":
            print(f"wrote {write_manifest(args.path)}")
            return 0
        entries = read_manifest(args.path)
        for name in entries:
            check_model(args.path.resolve().parent / name, args.path)
            print(f"{name}: OK")
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
