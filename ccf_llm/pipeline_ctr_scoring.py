# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Serving CCF-LLM: rank many candidate items per user with a shared, cached prompt prefix.

* `CTRScoringPipeline`, registered as `pipeline("ctr-scoring", ...)`: one user, their history and candidate items
  in; candidates ranked by click score out.
* `score_rows`: offline scoring of a whole table of `(user, history, item)` rows (e.g. a test split), grouping the
  rows that share a prompt prefix and batching many users per LLM call.
* `load_ctr_model`: a trained `examples/run_ctr.py` folder (base model + `adapter/`) as one merged model.

All three go through `CCFLlamaProcessor.ranking_inputs` and `CCFLlamaForCTR.score_candidates`.
"""

import filecmp
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from transformers import AutoModel, Pipeline
from transformers.utils import logging

from .modeling_ccf_llama import CCFLlamaForCTR
from .precision import device_precision
from .ragged import as_int_array, latest_items, offsets_of, to_ragged

logger = logging.get_logger(__name__)

ADAPTER_SUBFOLDER = "adapter"
_MERGED = "_ccf_merged_adapter"  # set on a model once its folder's adapter is merged in, so it never is twice


def _same_weights(folder: Path, other: Path) -> bool:
    """Whether two saved models hold byte-identical weight files (a run folder and its copy)."""
    names = sorted(p.name for p in folder.glob("*.safetensors"))
    return (
        bool(names)
        and names == sorted(p.name for p in other.glob("*.safetensors"))
        and all(filecmp.cmp(folder / name, other / name, shallow=False) for name in names)
    )


def _merge_saved_adapter(model, path: str | Path | None = None, adapter: str | Path | None = None):
    """
    `model` with an adapter merged in: `adapter` (a folder holding one, e.g. a training checkpoint of
    `CCFTwoStageTrainer`) or, by default, the one saved next to the model (`<path>/adapter`, as `run_ctr.py` writes it).

    Nothing is merged into a model that already carries its adapter (a PEFT model, or one `load_ctr_model` merged),
    nor into an in-memory model with no folder of its own (`name_or_path` empty: the current directory is not its
    folder). An adapter whose `base_model_name_or_path` is another local folder belongs to another model: refused,
    unless that folder holds the same weights byte for byte (the run folder was copied or moved).
    """
    if (
        not isinstance(model, CCFLlamaForCTR)
        or hasattr(model, "peft_config")
        or getattr(model, _MERGED, None)
    ):
        if adapter is not None:
            what = (
                "is not a CCFLlamaForCTR"
                if not isinstance(model, CCFLlamaForCTR)
                else "already carries an adapter"
            )
            raise ValueError(f"the model {what}: the adapter in {adapter} cannot be merged into it")
        return model
    if path is None and not model.name_or_path:
        if adapter is not None:
            raise ValueError(
                f"the model has no folder (name_or_path is empty) to check the adapter in {adapter} against"
            )
        return model
    folder = Path(path if path is not None else model.name_or_path)
    adapter_folder = Path(adapter) if adapter is not None else folder / ADAPTER_SUBFOLDER
    adapter_config = adapter_folder / "adapter_config.json"
    if not adapter_config.is_file():
        if adapter is not None:
            raise FileNotFoundError(f"{adapter_folder} holds no adapter (no adapter_config.json)")
        return model
    base = json.loads(adapter_config.read_text()).get("base_model_name_or_path") or ""
    if (
        base
        and Path(base).is_dir()
        and Path(base).resolve() != folder.resolve()
        and not _same_weights(Path(base), folder)
    ):
        raise ValueError(
            f"the adapter in {adapter_folder} was trained on the base model in {base}, not on {folder}: "
            "it does not belong to this model"
        )
    from peft import PeftConfig, PeftModel

    from .trainer_ccf_llama import load_adapter_weights

    logger.info("merging the adapter in %s into the model", adapter_folder)
    config = PeftConfig.from_pretrained(str(adapter_folder))
    config.inference_mode = True
    wrapped = PeftModel(model, config)
    # strict, unlike PeftModel.from_pretrained (it only warns): a file lacking weights is refused, not merged as
    # initialized weights; adapters saved before the model split have their keys renamed
    if not load_adapter_weights(wrapped, adapter_folder):
        raise FileNotFoundError(f"{adapter_folder} has an adapter_config.json but no adapter weights")
    merged = wrapped.merge_and_unload()
    setattr(merged, _MERGED, str(adapter_folder))
    return merged


def load_ctr_model(
    path: str | Path, merge_adapter: bool = True, adapter: str | Path | None = None, **kwargs
) -> CCFLlamaForCTR:
    """
    Load a trained CCF-LLM for scoring: `AutoModel.from_pretrained(path, **kwargs)` and, when the folder has an
    `adapter/` subfolder (LoRA + ALG/GATE, as `examples/run_ctr.py` saves it), that adapter merged in, so scoring
    runs at the speed of the plain model. `adapter` merges another folder's adapter instead, e.g. a checkpoint of
    the last stage (`path/stage_2_fusion/checkpoint-600`: the one validation UAUC selects). Without `merge_adapter`
    the base model alone is returned.
    """
    if adapter is not None and not merge_adapter:
        raise ValueError(f"adapter={adapter} asks for a merge that merge_adapter=False forbids")
    model = AutoModel.from_pretrained(path, **kwargs)
    if not isinstance(model, CCFLlamaForCTR):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a CCF-LLM model (CCFLlamaForCTR)")
    return (_merge_saved_adapter(model, path, adapter) if merge_adapter else model).eval()


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
            if not found.native_bf16:  # a bf16 checkpoint on e.g. an AVX2 CPU: bf16 matmuls run >100x slower
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
_PREFIX_TOKENS = ("prefix_input_ids", "prefix_attention_mask", "prefix_token_item_ids")  # left-padded
_PER_PREFIX = (*_PREFIX_TOKENS, "user_ids", "cf_history")
_PER_ROW = ("input_ids", "attention_mask", "token_item_ids")


def score_rows(
    model,
    processor,
    user_ids,
    histories,
    item_ids,
    batch_size: int = 64,
    progress: bool = False,
    strategy: str = "auto",
) -> np.ndarray:
    """
    Click scores of a table of rows `(user_ids[r], histories[r], item_ids[r])`, in row order.

    Two ways to run the LLM, with the same scores (up to floating-point reassociation):

    * `"prefix_cache"`: rows whose prompts share a prefix (same user and same latest history items) are grouped;
      prefixes, in order of length, are packed into calls of about `batch_size` rows to `model.score_candidates`,
      each encoding its prefixes once. Pays off when many rows share a prefix (ranking many candidates per user).
    * `"full"`: every row's whole prompt through `model(...)`, in batches of `batch_size` rows of similar length.
      Better when few rows share a prefix and the part after the target is long (CTR tables: about 1.8 rows per
      prefix on ML-1M's validation and test splits), where the cache saves fewer tokens than its padding costs.
    * `"auto"` (default): per block of `64 * batch_size` rows, the strategy that runs fewer tokens, padding
      included (both are counted exactly from the block's tokenized prompts before anything runs;
      `scoring_tokens` gives the counts without running the model).

    Args:
        model: a `CCFLlamaForCTR` (or a PEFT model around one).
        processor: its `CCFLlamaProcessor`.
        user_ids, item_ids: `(rows,)` ids; histories: one list (or arrow list) of earlier positives per row.
        batch_size: rows per LLM call.
        progress: show a tqdm progress bar over rows.
        strategy: `"auto"`, `"prefix_cache"` or `"full"`.
    """
    if strategy not in SCORING_STRATEGIES:
        raise ValueError(f"strategy must be one of {SCORING_STRATEGIES}, got {strategy!r}")
    users, items = as_int_array(user_ids), as_int_array(item_ids)
    history_table = pa.LargeListArray.from_arrays(*reversed(to_ragged(histories)))  # (offsets, values)
    scores = np.empty(len(items), dtype=np.float32)
    from tqdm.auto import tqdm

    with tqdm(total=len(items), disable=not progress, unit="row", desc="scoring") as bar:
        for rows, features, plan in _blocks(
            processor, users, history_table, items, batch_size, strategy != "full"
        ):
            if plan is not None and (strategy == "prefix_cache" or plan.cheaper == "prefix_cache"):
                scores[rows] = plan.run(model, features, batch_size, bar)
            else:
                block = history_table.take(pa.array(rows))
                scores[rows] = _score_full_prompts(
                    model, processor, users[rows], block, items[rows], batch_size, bar
                )
    return scores


def scoring_tokens(processor, user_ids, histories, item_ids, batch_size: int = 64) -> dict:
    """
    The tokens each `score_rows` strategy runs through the LLM for a table of rows, padding included, counted from
    the tokenized prompts without running the model: `{"prefix_cache": ..., "full": ..., "auto": ...}`, and
    `"auto_blocks"`, how many of `"auto"`'s blocks (of `64 * batch_size` rows) use each strategy. Arguments as
    `score_rows`.
    """
    users, items = as_int_array(user_ids), as_int_array(item_ids)
    counts = {"prefix_cache": 0, "full": 0, "auto": 0, "auto_blocks": {"prefix_cache": 0, "full": 0}}
    for _, _, plan in _blocks(processor, users, histories, items, batch_size, with_plan=True):
        counts["prefix_cache"] += plan.tokens
        counts["full"] += plan.full_tokens
        counts["auto"] += min(plan.tokens, plan.full_tokens)
        counts["auto_blocks"][plan.cheaper] += 1
    return counts


def _blocks(processor, users, histories, items, batch_size: int, with_plan: bool):
    """
    `score_rows`' work, block by block: rows grouped by prompt prefix (same user, same latest history items), whole
    groups in blocks of about `64 * batch_size` rows. Yields each block's row indices and, with `with_plan`, its
    prefix-cache inputs and `_PrefixCachePlan` (else `None, None`).
    """
    flat_hist, hist_off = to_ragged(histories)
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
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # rows, grouped by prefix key
    sizes = np.bincount(group, minlength=len(keys))
    group_start = np.cumsum(sizes) - sizes
    block_of_group = group_start // (64 * batch_size)  # blocks of whole groups, tokenized at once
    block_bounds = np.append(np.searchsorted(block_of_group, np.unique(block_of_group)), len(keys))
    for lo, hi in zip(block_bounds[:-1], block_bounds[1:], strict=True):
        rows = order[group_start[lo] : group_start[hi - 1] + sizes[hi - 1]]
        if not with_plan:
            yield rows, None, None
            continue
        present = keys[lo:hi, 1:] > 0  # latest items, left-padded with 0
        features = processor.ranking_inputs(
            keys[lo:hi, 0],
            pa.LargeListArray.from_arrays(offsets_of(present.sum(1)), keys[lo:hi, 1:][present]),
            pa.LargeListArray.from_arrays(offsets_of(sizes[lo:hi]), items[rows]),
        )
        yield rows, features, _PrefixCachePlan(features, batch_size)


class _PrefixCachePlan:
    """
    How `score_rows` runs a block with the prefix cache: prefixes in order of length, packed into calls of about
    `batch_size` candidates; `tokens` is what the calls run, padding included, and `full_tokens` what
    `strategy="full"` would run instead (the block's whole prompts, sorted by length, in batches of `batch_size`);
    `cheaper` is the strategy that runs fewer (`auto`'s choice).
    """

    def __init__(self, features, batch_size: int):
        self.prefix_len = features["prefix_attention_mask"].sum(1).numpy()
        self.suffix_len = features["attention_mask"].sum(1).numpy()
        self.prefix_index = features["prefix_index"].numpy()
        self.by_length = np.argsort(self.prefix_len, kind="stable")
        rank = np.empty_like(self.by_length)
        rank[self.by_length] = np.arange(len(rank))
        self.rank = rank
        self.candidates = np.argsort(
            rank[self.prefix_index], kind="stable"
        )  # grouped by prefix, in that order
        count = np.bincount(self.prefix_index, minlength=len(rank))[self.by_length]
        self.start, self.count = np.cumsum(count) - count, count
        chunk = self.start // batch_size
        self.bounds = np.append(np.searchsorted(chunk, np.unique(chunk)), len(rank))
        self.tokens = 0
        for lo, hi in self.chunks():
            cand = self.suffix_len[self.candidates[self.start[lo] : self.start[hi - 1] + self.count[hi - 1]]]
            self.tokens += (hi - lo) * int(self.prefix_len[self.by_length[lo:hi]].max())
            self.tokens += sum(
                len(b) * int(b.max()) for b in np.split(cand, range(batch_size, len(cand), batch_size))
            )
        self.tokens = int(self.tokens)
        lengths = np.sort(self.prefix_len[self.prefix_index] + self.suffix_len)
        self.full_tokens = int(
            sum(len(b) * int(b[-1]) for b in np.split(lengths, range(batch_size, len(lengths), batch_size)))
        )
        self.cheaper = "prefix_cache" if self.tokens <= self.full_tokens else "full"  # `auto`'s choice

    def chunks(self):
        return zip(self.bounds[:-1], self.bounds[1:], strict=True)

    def run(self, model, features, batch_size, bar) -> np.ndarray:
        scores = np.empty(len(self.suffix_len), dtype=np.float32)
        for lo, hi in self.chunks():
            prefixes = torch.from_numpy(self.by_length[lo:hi])
            cand = self.candidates[self.start[lo] : self.start[hi - 1] + self.count[hi - 1]]
            width = int(self.prefix_len[self.by_length[lo:hi]].max())  # prefixes are left-padded
            call = {key: features[key][prefixes] for key in _PER_PREFIX if key in features}
            call.update({key: call[key][:, -width:] for key in _PREFIX_TOKENS if key in call})
            call.update({key: features[key][torch.from_numpy(cand)] for key in _PER_ROW if key in features})
            call["prefix_index"] = torch.from_numpy(self.rank[self.prefix_index[cand]] - lo)
            scores[cand] = model.score_candidates(**call, batch_size=batch_size).scores.float().cpu().numpy()
            bar.update(len(cand))
        return scores


def _score_full_prompts(model, processor, users, histories, items, batch_size, bar) -> np.ndarray:
    """`score_rows(strategy="full")` on a block: whole prompts, tokenized at once, in batches sorted by length."""
    batch = processor(users, histories, items, padding_side="left")
    order = torch.argsort(batch["attention_mask"].sum(-1), stable=True)
    scores = np.empty(len(items), dtype=np.float32)
    for start in range(0, len(items), batch_size):
        pick = order[start : start + batch_size]
        keep = batch["attention_mask"][pick].any(0)  # drop the columns that are padding in every row
        inputs = {
            key: value[pick][:, keep] if key in _PER_ROW else value[pick] for key, value in batch.items()
        }
        with torch.inference_mode():
            scores[pick.numpy()] = model(**inputs).scores.float().cpu().numpy()
        bar.update(len(pick))
    return scores


__all__ = ["SCORING_STRATEGIES", "CTRScoringPipeline", "load_ctr_model", "score_rows", "scoring_tokens"]
