# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Serving CCF-LLM: rank many candidate items per user with a shared, cached prompt prefix.

* `CTRScoringPipeline`, registered as `pipeline("ctr-scoring", ...)`: one user, their history and candidate items
  in; candidates ranked by click score out.
* `score_rows`: offline scoring of a whole table of `(user, history, item)` rows (e.g. a test split), grouping the
  rows that share a prompt prefix and batching many users per LLM call.
* `load_ctr_model`: a trained `examples/run_ctr.py` folder (base model + `adapter/`) as one merged model.

All three go through `CCFLlamaProcessor.ranking_inputs` and `CCFLlamaForCTR.score_candidates`.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from transformers import AutoModel, Pipeline
from transformers.utils import logging

from .modeling_ccf_llama import CCFLlamaForCTR
from .precision import device_precision
from .ragged import latest_items
from .ragged import to_ragged as _ragged

logger = logging.get_logger(__name__)

ADAPTER_SUBFOLDER = "adapter"
_MERGED = "_ccf_merged_adapter"  # set on a model once its folder's adapter is merged in, so it never is twice


def _merge_saved_adapter(model, path: str | Path | None = None):
    """
    `model` with the adapter saved next to it (`<path>/adapter`, as `run_ctr.py` writes it) merged in.

    Nothing is merged into a model that already carries its adapter (a PEFT model, or one `load_ctr_model` merged),
    nor into an in-memory model with no folder of its own (`name_or_path` empty: the current directory is not its
    folder). An adapter whose `base_model_name_or_path` is another local folder belongs to another model: refused.
    """
    if (
        not isinstance(model, CCFLlamaForCTR)
        or hasattr(model, "peft_config")
        or getattr(model, _MERGED, None)
    ):
        return model
    if path is None and not model.name_or_path:
        return model
    folder = Path(path if path is not None else model.name_or_path)
    adapter_config = folder / ADAPTER_SUBFOLDER / "adapter_config.json"
    if not adapter_config.is_file():
        return model
    base = json.loads(adapter_config.read_text()).get("base_model_name_or_path") or ""
    if base and Path(base).is_dir() and Path(base).resolve() != folder.resolve():
        raise ValueError(
            f"the adapter in {folder / ADAPTER_SUBFOLDER} was trained on the base model in {base}, not on {folder}: "
            "it does not belong to this model"
        )
    from peft import PeftModel

    logger.info("merging the adapter in %s into the model", folder / ADAPTER_SUBFOLDER)
    merged = PeftModel.from_pretrained(model, str(folder), subfolder=ADAPTER_SUBFOLDER).merge_and_unload()
    setattr(merged, _MERGED, str(folder / ADAPTER_SUBFOLDER))
    return merged


def load_ctr_model(path: str | Path, merge_adapter: bool = True, **kwargs) -> CCFLlamaForCTR:
    """
    Load a trained CCF-LLM for scoring: `AutoModel.from_pretrained(path, **kwargs)` and, when the folder has an
    `adapter/` subfolder (LoRA + ALG/GATE, as `examples/run_ctr.py` saves it), that adapter merged in, so scoring
    runs at the speed of the plain model. Without `merge_adapter` the base model alone is returned.
    """
    model = AutoModel.from_pretrained(path, **kwargs)
    if not isinstance(model, CCFLlamaForCTR):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a CCF-LLM model (CCFLlamaForCTR)")
    return (_merge_saved_adapter(model, path) if merge_adapter else model).eval()


class CTRScoringPipeline(Pipeline):
    """
    Rank candidate items for a user with CCF-LLM (`pipeline("ctr-scoring", model=..., processor=...)`).

    Input: a dict `{"user_id": int, "history": [item ids, oldest first], "candidates": [item ids]}`, or a list of
    them. Output per input: `{"item_ids": [...], "scores": [...], "titles": [...]}`, best candidate first.

    The user's prompt prefix (history and user feature) runs through the LLM once; the candidates' suffixes are
    scored against its key/value cache `candidate_batch_size` at a time (see `CCFLlamaForCTR.score_candidates`),
    so many candidates cost little more than one prompt each of the suffix length.

    `model` may be a folder written by `examples/run_ctr.py`: its `adapter/` is merged in on load. With the default
    `dtype="auto"`, a bf16 model on a CPU without native bf16 (no AMX, no AVX512-BF16) is cast to fp32; an fp32 model
    stays fp32 (bf16 would move its scores by up to ~0.06); an explicit `dtype=` is used as given.

    Call parameters: `top_k` (keep the best k), `candidate_batch_size` (candidates per LLM call; default 64).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model, *args, **kwargs):
        model = _merge_saved_adapter(model)
        if (
            kwargs.get("dtype", "auto") == "auto"
            and model.device.type == "cpu"
            and model.dtype == torch.bfloat16
        ):
            found = device_precision("cpu")
            if not found.native_bf16:  # a bf16 checkpoint on e.g. an AVX2 CPU: bf16 matmuls run ~450x slower
                logger.warning(
                    "ctr-scoring: casting the bf16 model to float32 (dtype='auto'): %s", found.reason
                )
                model = model.float()
        super().__init__(model, *args, **kwargs)
        if self.processor is None:
            raise ValueError(
                "ctr-scoring needs the CCFLlamaProcessor that built the training prompts: pass processor= "
                "(it is saved next to a model trained with examples/run_ctr.py)"
            )
        self.model.eval()

    def _sanitize_parameters(self, top_k=None, candidate_batch_size=None, **kwargs):
        if kwargs:
            raise TypeError(f"ctr-scoring got unexpected arguments {sorted(kwargs)}")
        forward = {} if candidate_batch_size is None else {"candidate_batch_size": candidate_batch_size}
        return {}, forward, {} if top_k is None else {"top_k": top_k}

    def preprocess(self, inputs):
        if not isinstance(inputs, dict):
            raise TypeError(
                f"ctr-scoring takes dicts with user_id, history, candidates; got {type(inputs).__name__}"
            )
        needed = {"history", "candidates"} | ({"user_id"} if self.processor.fusion.uses_cf else set())
        missing = needed - set(inputs)
        if missing:
            raise ValueError(f"ctr-scoring input lacks {sorted(missing)} (got keys {sorted(inputs)})")
        candidates = np.asarray(inputs["candidates"], dtype=np.int64).reshape(-1)
        features = self.processor.ranking_inputs(
            [inputs.get("user_id", 0)], [list(inputs["history"])], [candidates]
        )
        return {"features": features, "candidates": candidates}

    def _forward(self, model_inputs, candidate_batch_size: int = 64):
        output = self.model.score_candidates(**model_inputs["features"], batch_size=candidate_batch_size)
        return {"scores": output.scores.float().cpu().numpy(), "candidates": model_inputs["candidates"]}

    def postprocess(self, model_outputs, top_k: int | None = None):
        scores, candidates = model_outputs["scores"], model_outputs["candidates"]
        order = np.argsort(-scores, kind="stable")[:top_k]
        titles = self.processor.item_titles
        return {
            "item_ids": candidates[order].tolist(),
            "scores": scores[order].tolist(),
            "titles": [titles[i] for i in candidates[order]],
        }


SCORING_STRATEGIES = ("auto", "prefix_cache", "full")


def score_rows(
    model,
    processor,
    user_ids,
    histories,
    item_ids,
    batch_size: int = 64,
    progress: bool = False,
    strategy: str = "auto",
    min_rows_per_prefix: float = 4.0,
) -> np.ndarray:
    """
    Click scores of a table of rows `(user_ids[r], histories[r], item_ids[r])`, in row order.

    Two ways to run the LLM, with the same scores (up to floating-point reassociation):

    * `"prefix_cache"`: rows whose prompts share a prefix (same user and same latest history items) are grouped;
      groups, in order of prefix length, are packed into calls of about `batch_size` rows to
      `model.score_candidates`, each encoding its prefixes once. Pays off when many rows share a prefix (ranking
      many candidates per user).
    * `"full"`: every row's whole prompt through `model(...)`, in batches of `batch_size` rows of similar length
      (almost no padding). Faster when few rows share a prefix, as in CTR tables (about 1.8 rows per prefix on
      ML-1M's validation and test splits): there the cache saves few tokens and costs padding and a second pass.
    * `"auto"` (default): `"prefix_cache"` when the table has at least `min_rows_per_prefix` rows per distinct
      prefix, else `"full"`.

    Args:
        model: a `CCFLlamaForCTR` (or a PEFT model around one).
        processor: its `CCFLlamaProcessor`.
        user_ids, item_ids: `(rows,)` ids; histories: one list (or arrow list) of earlier positives per row.
        batch_size: rows per LLM call.
        progress: show a tqdm progress bar over rows.
        strategy: `"auto"`, `"prefix_cache"` or `"full"`.
        min_rows_per_prefix: the `"auto"` threshold.
    """
    if strategy not in SCORING_STRATEGIES:
        raise ValueError(f"strategy must be one of {SCORING_STRATEGIES}, got {strategy!r}")
    users = np.asarray(user_ids, dtype=np.int64).reshape(-1)
    items = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    flat_hist, hist_off = _ragged(histories)
    if not len(users) == len(items) == len(hist_off) - 1:
        raise ValueError(
            f"got {len(users)} user ids, {len(hist_off) - 1} histories and {len(items)} item ids: one of each per row"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if (flat_hist < 1).any():  # 0 pads the grouping keys below: a 0 in a history must not vanish there
        bad = np.searchsorted(hist_off, np.flatnonzero(flat_hist < 1)[:5], side="right") - 1
        raise ValueError(f"histories of rows {bad.tolist()} hold item ids < 1 (ids start at 1)")
    # only the latest items enter the prompt (and the sequential CF encoder): rows agreeing on them share a prefix
    latest = latest_items(flat_hist, hist_off, max(processor.history_size, processor.cf_history_size, 1))
    keys, group = np.unique(np.column_stack([users, latest]), axis=0, return_inverse=True)
    if strategy == "auto":
        strategy = "prefix_cache" if len(items) >= min_rows_per_prefix * len(keys) else "full"
    from tqdm.auto import tqdm

    with tqdm(total=len(items), disable=not progress, unit="row", desc="scoring") as bar:
        if strategy == "full":
            return _score_full_prompts(model, processor, users, flat_hist, hist_off, items, batch_size, bar)
        return _score_with_prefix_cache(model, processor, items, keys, group.reshape(-1), batch_size, bar)


def _score_full_prompts(model, processor, users, flat_hist, hist_off, items, batch_size, bar) -> np.ndarray:
    """`score_rows(strategy="full")`: whole prompts, blocks of rows tokenized at once, batches sorted by length."""
    histories = pa.LargeListArray.from_arrays(hist_off, flat_hist)
    scores = np.empty(len(items), dtype=np.float32)
    block = 64 * batch_size  # rows tokenized together: bounds the padded id matrix
    for lo in range(0, len(items), block):
        rows = np.arange(lo, min(lo + block, len(items)))
        batch = processor(users[rows], histories.slice(lo, len(rows)), items[rows], padding_side="left")
        order = torch.argsort(batch["attention_mask"].sum(-1), stable=True)
        for start in range(0, len(rows), batch_size):
            pick = order[start : start + batch_size]
            keep = batch["attention_mask"][pick].any(0)  # drop the columns that are padding in every row
            inputs = {
                key: value[pick][:, keep]
                if key in ("input_ids", "attention_mask", "token_item_ids")
                else value[pick]
                for key, value in batch.items()
            }
            with torch.inference_mode():
                scores[rows[pick.numpy()]] = model(**inputs).scores.float().cpu().numpy()
            bar.update(len(pick))
    return scores


def _score_with_prefix_cache(model, processor, items, keys, group, batch_size, bar) -> np.ndarray:
    """`score_rows(strategy="prefix_cache")`: groups sharing a prefix, in order of prefix length, per call."""
    sizes = np.bincount(group, minlength=len(keys))
    present = keys[:, 1:] > 0
    # groups ordered by prefix length (title tokens of the history items shown): calls pad their prefixes little
    shown, position = np.unique(keys[:, 1:][present], return_inverse=True)
    title_tokens = processor.title_token_ids(shown)[1].sum(-1).numpy() if len(shown) else np.zeros(0)
    prefix_tokens = np.bincount(np.nonzero(present)[0], weights=title_tokens[position], minlength=len(keys))
    by_length = np.lexsort((keys[:, 0], prefix_tokens))
    rank = np.empty_like(by_length)
    rank[by_length] = np.arange(len(by_length))
    keys, present, sizes = keys[by_length], present[by_length], sizes[by_length]
    group = rank[group]
    order = np.argsort(group, kind="stable")
    group_start = np.cumsum(sizes) - sizes
    chunk_of_group = group_start // batch_size  # groups starting in the same window of batch_size rows
    chunk_bounds = np.searchsorted(chunk_of_group, np.unique(chunk_of_group))
    chunk_bounds = np.append(chunk_bounds, len(keys))
    scores = np.empty(len(items), dtype=np.float32)
    for lo, hi in zip(chunk_bounds[:-1], chunk_bounds[1:], strict=True):
        rows = order[group_start[lo] : group_start[hi - 1] + sizes[hi - 1]]
        chunk_hist = keys[lo:hi, 1:]  # latest items, left-padded with 0
        hist = pa.LargeListArray.from_arrays(
            np.concatenate([[0], np.cumsum(present[lo:hi].sum(1))]), chunk_hist[present[lo:hi]]
        )
        cand = pa.LargeListArray.from_arrays(np.concatenate([[0], np.cumsum(sizes[lo:hi])]), items[rows])
        features = processor.ranking_inputs(keys[lo:hi, 0], hist, cand)
        output = model.score_candidates(**features, batch_size=batch_size)
        scores[rows] = output.scores.float().cpu().numpy()
        bar.update(len(rows))
    return scores


__all__ = ["SCORING_STRATEGIES", "CTRScoringPipeline", "load_ctr_model", "score_rows"]
