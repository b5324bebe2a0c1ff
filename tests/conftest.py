"""Test environment: one CPU thread, no Hub, caches in a temporary folder (set before torch/transformers load)."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
_TMP = Path(tempfile.mkdtemp(prefix="ccf_llm_tests_"))
os.environ["HF_HOME"] = str(_TMP / "hf_home")
os.environ["CCF_LLM_CACHE"] = str(
    _TMP / "ccf_llm_cache"
)  # the GGUF conversion path runs in every test session

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"
SMOLLM2_DIR = SHARED / "models" / "smollm2-135m-instruct-q4_1"


def require_shared(path: Path):
    """Skip when a folder of ../shared is missing; where it exists the test always runs (so it fails under CI)."""
    if not path.exists():
        pytest.skip(f"{path} is not present on this machine")
    return path


def tiny_tokenizer(words, padding_side="left"):
    """A word-level tokenizer built in code (no Hub): `<pad>` = 0, then `words` in order."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", padding_side=padding_side
    )


def tiny_llm(tokenizer, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, **config):
    """A tiny random Llama causal LM over `tokenizer`'s vocabulary."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    return AutoModelForCausalLM.from_config(
        LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            vocab_size=len(tokenizer),
            **config,
        )  # fmt: skip
    )
