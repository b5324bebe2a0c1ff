# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Hybrid prompt translation (§3.2 of the CCF-LLM paper) and the batch collator.

The processor turns `(user, history, target item)` rows into token ids plus, aligned with them, the item id each
title token belongs to — what `CCFLlamaForCTR` fuses (Eq. 4). Every title is tokenized once, when the item table is
set; prompts are then assembled from cached token pieces with numpy index arithmetic over the whole batch, with no
Python loop over rows or tokens.
"""

import re
from collections.abc import Mapping
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import cached_file

from .configuration_ccf_llama import ITEM_TOKEN, USER_TOKEN, CCFLlamaConfig, get_fusion_mode
from .ragged import (
    as_int_array,
    latest_items,
    offsets_of,
    pad_ragged,
    slice_indices,
    take_rows,
    to_arrow,
    to_ragged,
)

PAPER_TEMPLATE = (
    "#Question: A user has given high ratings to the following items: {history}. Additionally, we have information "
    "about the user's preferences encoded in the feature {user}. Using all available information, make a prediction "
    'about whether the user would enjoy the item {target}. Answer with "Yes" or "No". #Answer:'
)
"""The hybrid prompt of §3.2, verbatim: `{history}` = {[Item_u]}, `{user}` = [User_u], `{target}` = [Item_i]."""

TEXT_TEMPLATE = (
    "#Question: A user has given high ratings to the following items: {history}. Using all available information, "
    'make a prediction about whether the user would enjoy the item {target}. Answer with "Yes" or "No". #Answer:'
)
"""The paper's template without the user-feature sentence: the TALLRec-style prompt of `text` mode."""

PILOT_TEMPLATE = (
    "#Question: A user has given high ratings to the following items: {history}. Additionally, we have information "
    "that users like these items may also enjoy: {similar}. Using all available information, make a prediction "
    'about whether the user would enjoy the item {target}. Answer with "Yes" or "No". #Answer:'
)
"""§4.2 (RQ1): the collaborative signal as natural language, `{similar}` = the top-10 items of a CF model."""

SLOTS = ("history", "user", "target", "similar")
_SLOT_RE = re.compile(r"\{(" + "|".join(SLOTS) + r")\}")


class CCFLlamaProcessor(ProcessorMixin):
    r"""
    Hybrid prompt translation for CCF-LLM (§3.2).

    Each row `(user_id, history, target_item_id)` becomes the template with
    * `{history}`: the last `history_size` items of `history` (oldest first), each as its title in double quotes,
      joined with `", "`; an empty history renders as `empty_history` ("none" by default);
    * `{user}`: the user placeholder token (replaced by ALG(x_u^CF) in the model);
    * `{target}`: the target item's title in double quotes;
    * `{similar}` (pilot-study template only): titles of CF-recommended items, as plain text.

    The output holds, aligned with `input_ids`, `token_item_ids`: the item each title token belongs to (modes that
    mark titles) or the item of each CF placeholder token, which `inject` mode adds after every title (CoLLM); `text`
    mode returns no CF fields. What a mode does is its row of `FUSION_MODE_TABLE`. Prompts longer than `max_length`
    drop their oldest history items whole: a title is never cut, and the user and target are never dropped.

    Titles are tokenized on their own, once, with special-token parsing off: a title containing `<|user_cf|>` or
    `<|im_end|>` stays text and can never act as a placeholder. Literal template text is tokenized as is.

    Args:
        tokenizer: the LLM's tokenizer, holding the placeholder tokens (see `CCFLlamaForCTR.from_llm`).
        item_titles (`Mapping[int, str]` or `Sequence[str | None]`, *optional*):
            Title of each item id (a sequence is indexed by id; index 0 is the padding id and unused).
        fusion_mode (`str`, *optional*): the model's fusion mode; taken from `config` when that is given (a different
            value is an error). `"gate"` when neither is given.
        template (`str`, *optional*): the prompt template; defaults to `PAPER_TEMPLATE` (`TEXT_TEMPLATE` for a mode
            without CF).
        history_size (`int`, defaults to 10): how many of the latest history items enter the prompt (CoLLM: 10).
        max_length (`int`, defaults to 700): the maximum prompt length in tokens (the paper's 700).
        empty_history (`str`, defaults to `"none"`): the rendering of an empty history.
        user_token / item_token (`str`): the placeholder tokens.
        cf_history_size (`int`, *optional*): when > 0, also return `cf_history`, each row's latest `cf_history_size`
            history items left-padded with 0: the input of a sequential CF source (SASRec: 25). Defaults to
            `config.max_cf_history` (0 without a config).
        config (`CCFLlamaConfig`, or a folder / Hub id holding one, *optional*): the model's configuration. The
            processor takes its fusion mode and `cf_history_size` from it, and checks at construction that the
            tokenizer's placeholder ids are the model's. `from_pretrained` reads the `config.json` saved beside the
            processor when there is one.
    """

    def __init__(
        self,
        tokenizer=None,
        item_titles=None,
        fusion_mode: str | None = None,
        template: str | None = None,
        history_size: int = 10,
        max_length: int = 700,
        empty_history: str = "none",
        user_token: str = USER_TOKEN,
        item_token: str = ITEM_TOKEN,
        cf_history_size: int | None = None,
        config: CCFLlamaConfig | str | None = None,
        **kwargs,
    ):
        if isinstance(config, (str, Path)):
            config = CCFLlamaConfig.from_pretrained(config)
        if config is not None:
            if fusion_mode is not None and fusion_mode != config.fusion_mode:
                raise ValueError(
                    f"fusion_mode={fusion_mode!r} but the model's config has fusion_mode={config.fusion_mode!r}: "
                    "the prompts would not match the model (leave fusion_mode out to take the model's)"
                )
            if cf_history_size is not None and cf_history_size != config.max_cf_history:
                raise ValueError(
                    f"cf_history_size={cf_history_size} but the model's sequential CF sources read "
                    f"{config.max_cf_history} history items (config.max_cf_history)"
                )
            fusion_mode, cf_history_size = config.fusion_mode, config.max_cf_history
        self.fusion = fusion_mode_row = get_fusion_mode(fusion_mode or "gate")
        if history_size < 0 or max_length < 1:
            raise ValueError(
                f"history_size must be >= 0 and max_length >= 1, got {history_size} and {max_length}"
            )
        self.fusion_mode = fusion_mode_row.name
        self.template = (
            template
            if template is not None
            else (PAPER_TEMPLATE if fusion_mode_row.uses_cf else TEXT_TEMPLATE)
        )
        self.history_size = history_size
        self.max_length = max_length
        self.empty_history = empty_history
        self.user_token = user_token
        self.item_token = item_token
        self.cf_history_size = cf_history_size or 0
        super().__init__(tokenizer, **kwargs)
        self._compile_template()
        if config is not None:
            self._check_placeholder_ids(config)
        self.item_titles = None
        if item_titles is not None:
            self.set_item_titles(item_titles)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`ProcessorMixin.from_pretrained`, checked against the model's `config.json` in the same folder, if any."""
        if "config" not in kwargs:
            found = cached_file(
                pretrained_model_name_or_path, "config.json", _raise_exceptions_for_missing_entries=False,
                **{k: kwargs[k] for k in ("subfolder", "revision", "cache_dir", "token") if k in kwargs},
            )  # fmt: skip
            if (
                found is not None
                and CCFLlamaConfig.from_json_file(found).model_type == CCFLlamaConfig.model_type
            ):
                kwargs["config"] = CCFLlamaConfig.from_pretrained(Path(found).parent)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def _check_placeholder_ids(self, config: CCFLlamaConfig):
        for name, token, expected in (("user", self.user_token, config.user_token_id),
                                      ("item", self.item_token, config.item_token_id)):  # fmt: skip
            found = (
                self.tokenizer.convert_tokens_to_ids(token) if token in self.tokenizer.get_vocab() else None
            )
            if config.uses_cf and expected is not None and found is not None and found != expected:
                raise ValueError(
                    f"the tokenizer's {name} placeholder {token!r} has id {found}, but the model's config says "
                    f"{name}_token_id={expected}: pass the tokenizer the model was built with"
                )

    # ------------------------------------------------------------------ setup
    def _encode_text(self, texts: list[str], split_special_tokens: bool = False) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(
            texts,
            add_special_tokens=False,
            split_special_tokens=split_special_tokens,
            return_attention_mask=False,
        )["input_ids"]

    def _compile_template(self):
        """Tokenize the template's literal pieces and the item renderings once."""
        parts = _SLOT_RE.split(self.template)
        literals, slots = parts[0::2], parts[1::2]
        counts = {slot: slots.count(slot) for slot in SLOTS}
        if counts["target"] != 1 or any(counts[s] > 1 for s in SLOTS):
            raise ValueError(
                f"the template needs exactly one {{target}} and at most one of each other slot: {self.template!r}"
            )
        if counts["user"] and not self.fusion.uses_cf:
            raise ValueError(
                f"fusion_mode={self.fusion_mode!r} carries no CF signal, so its template cannot have a {{user}} slot"
            )
        needed = [self.user_token] * bool(counts["user"]) + [self.item_token] * self.fusion.item_placeholder
        vocab = self.tokenizer.get_vocab() if needed else {}
        for token in needed:
            if token not in vocab:
                raise ValueError(
                    f"the tokenizer has no placeholder token {token!r}; build the model with "
                    "CCFLlamaForCTR.from_llm(llm, tokenizer, ...), which adds it, and pass that tokenizer"
                )
        # A space before a quoted slot moves into the slot's opening quote (' "Title"'), as in running text.
        spaced = []
        for i, slot in enumerate(slots):
            space = slot != "user" and literals[i].endswith(" ")
            literals[i] = literals[i][:-1] if space else literals[i]
            spaced.append(space)
        self._slots = slots
        bos = [self.tokenizer.bos_token_id] if getattr(self.tokenizer, "add_bos_token", False) else []
        piece_texts = {
            "open": '"',
            "open_space": ' "' if any(spaced) else '"',
            "sep": ', "',
            "close": '"',
            "empty": self.empty_history,
            "empty_space": " " + self.empty_history,
        }
        names = list(piece_texts)
        encoded = self._encode_text([piece_texts[n] for n in names])
        pieces = {n: ids for n, ids in zip(names, encoded, strict=True)}
        for i, ids in enumerate(self._encode_text(literals)):
            pieces[f"literal{i}"] = (bos + ids) if i == 0 else ids
        if self.fusion.uses_cf:
            pieces["user"] = [self.tokenizer.convert_tokens_to_ids(self.user_token)]
            pieces["item"] = [self.tokenizer.convert_tokens_to_ids(self.item_token)]
        self._spaced = spaced
        self._piece_names = list(pieces)
        self._piece_ids = {name: i for i, name in enumerate(self._piece_names)}
        self._pieces = [np.asarray(ids, dtype=np.int64) for ids in pieces.values()]

    def set_item_titles(self, item_titles):
        """Set the item table (id → title) and tokenize every title once."""
        if isinstance(item_titles, Mapping):
            ids = np.fromiter(item_titles.keys(), dtype=np.int64, count=len(item_titles))
            if (ids < 1).any():
                raise ValueError(
                    f"item ids must be >= 1 (0 is the padding id), got {ids[ids < 1][:5].tolist()}"
                )
            table = [None] * (int(ids.max(initial=0)) + 1)
            for item_id, title in item_titles.items():
                table[int(item_id)] = title
        else:
            table = list(item_titles)
        present = [i for i, title in enumerate(table) if title is not None and i > 0]
        titles = [table[i] for i in present]
        bad = [
            (i, t) for i, t in zip(present, titles, strict=True) if not isinstance(t, str) or not t.strip()
        ]
        if bad:
            raise ValueError(f"item titles must be non-empty strings; item {bad[0][0]} has {bad[0][1]!r}")
        for i, title in zip(present, titles, strict=True):
            try:
                title.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(
                    f"the title of item {i} is not valid text ({err.reason}): {title!r}"
                ) from err
        self.item_titles = table
        encoded = self._encode_text(titles, split_special_tokens=True)
        lengths = np.zeros(len(table), dtype=np.int64)
        lengths[present] = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        # One store for titles (segment = item id) and template pieces (segment = len(table) + piece index).
        seg_lengths = np.concatenate([lengths, [len(p) for p in self._pieces]]).astype(np.int64)
        self._num_title_segments = len(table)
        self._seg_len = seg_lengths
        self._seg_start = np.concatenate([[0], np.cumsum(seg_lengths)[:-1]])
        self._store = np.fromiter(
            chain(chain.from_iterable(encoded), chain.from_iterable(self._pieces)),
            dtype=np.int64,
            count=int(seg_lengths.sum()),
        )

    def title_token_ids(self, item_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached title tokens of `item_ids` (as prompts hold them): right-padded `(items, L)` ids and mask."""
        ids = as_int_array(item_ids)
        self._check_items(ids, "item list", np.arange(len(ids)))
        lengths = self._seg_len[ids]
        tokens = self._store[slice_indices(self._seg_start[ids], lengths)]
        matrix, mask = pad_ragged(tokens, offsets_of(lengths), "right", self.tokenizer.pad_token_id)
        return torch.from_numpy(matrix), torch.from_numpy(mask)

    def _piece(self, name: str) -> int:
        return self._num_title_segments + self._piece_ids[name]

    def cf_history(self, histories) -> torch.LongTensor:
        """
        `(rows, cf_history_size)`: each history's latest `cf_history_size` items, left-padded with 0, as the prompts'
        `cf_history` carries them (the input of a sequential CF source; e.g. for
        `CCFLlamaForCTR.fit_cf_standardization` over the training rows).
        """
        if not self.cf_history_size:
            raise ValueError("this processor has cf_history_size=0: its prompts carry no cf_history")
        return torch.from_numpy(latest_items(*to_ragged(histories), self.cf_history_size))

    # ------------------------------------------------------------- translation
    def _check_items(self, ids: np.ndarray, where: str, rows: np.ndarray):
        known = (ids >= 1) & (ids < self._num_title_segments)
        known[known] = self._seg_len[ids[known]] > 0
        if not known.all():
            bad = np.flatnonzero(~known)[:5]
            raise ValueError(
                f"unknown item ids (no title in the item table) in the {where} of rows {rows[bad].tolist()}: "
                f"{ids[bad].tolist()}"
            )

    # The prompt is described once, as parts: one row per emitted segment (a title or a template piece) with its
    # prompt row, slot position, order within the slot, segment, the item id its tokens carry, its history unit
    # (the history item it belongs to; -1: never dropped) and whether it opens a quoted item. The length budget sums
    # these parts' lengths, and assembly concatenates the same parts' tokens.
    def _parts(self, rows, pos, seg, sub=None, mark=None, unit=None, opener=None) -> dict[str, np.ndarray]:
        n = len(rows)
        zeros = np.zeros(n, np.int64)
        return {
            "row": np.asarray(rows, np.int64), "pos": np.full(n, pos), "seg": np.broadcast_to(seg, (n,)),
            "sub": zeros if sub is None else sub, "mark": zeros if mark is None else mark,
            "unit": np.full(n, -1) if unit is None else unit, "opener": np.zeros(n, bool) if opener is None else opener,
        }  # fmt: skip

    def _item_list(self, items, rows, pos, spaced, marked, droppable=False) -> dict[str, np.ndarray]:
        """
        A quoted item list: per item its opener (`open` for the first, `sep` after), title, `close` and, in modes
        with an item placeholder, the placeholder. Droppable lists (the history) open every item with `sep`; `_fit`
        gives the first kept item its opener.
        """
        n = len(items)
        index = np.arange(n) - np.searchsorted(rows, rows)  # position within the row's list
        first = self._piece("open_space" if spaced else "open")
        segs = [
            np.where((index == 0) & (not droppable), first, self._piece("sep")),
            items,
            self._piece("close"),
        ]
        marks = [0, items if marked and self.fusion.marks_titles else 0, 0]
        if marked and self.fusion.item_placeholder:
            segs.append(self._piece("item"))
            marks.append(items)
        k = len(segs)

        def columns(values):  # (n * k,): the k parts of each item, item after item
            return np.stack([np.broadcast_to(v, (n,)) for v in values], 1).reshape(-1)

        return self._parts(
            np.repeat(rows, k), pos, seg=columns(segs), sub=(index[:, None] * k + np.arange(k)).reshape(-1),
            mark=columns(marks),
            unit=np.repeat(np.arange(n) if droppable else np.full(n, -1), k),
            opener=np.tile(np.arange(k) == 0, n),
        )  # fmt: skip

    def _slot_parts(self, slot, pos, spaced, rows, targets, history, similar) -> dict[str, np.ndarray]:
        """The parts one slot emits in every row: adding a slot to the template is one branch here."""
        if slot == "user":
            return self._parts(rows, pos, self._piece("user"))
        if slot == "target":
            return self._item_list(targets, rows, pos, spaced, marked=self.fusion.uses_cf)
        if slot == "history":
            return self._item_list(*history, pos, spaced, marked=self.fusion.uses_cf, droppable=True)
        if similar is None:
            raise ValueError("the template has a {similar} slot: pass similar_item_ids=")
        return self._item_list(*similar, pos, spaced, marked=False)  # plain-text titles, never fused

    def _fit(self, parts: dict, n_rows: int) -> dict[str, np.ndarray]:
        """
        Drop each prompt's oldest history items whole until it fits `max_length` (the longest suffix of its history
        that fits), give the first kept item its opener and an emptied history its `empty` rendering.
        """
        seg_len = self._seg_len
        length = seg_len[parts["seg"]]
        unit = parts["unit"]
        fixed = np.bincount(parts["row"][unit < 0], weights=length[unit < 0], minlength=n_rows).astype(
            np.int64
        )
        if "history" not in self._slots:
            self._check_fits(fixed)
            return parts
        history = self._slots.index("history")
        spaced = self._spaced[history]
        first_open, empty = (self._piece(n + ("_space" if spaced else "")) for n in ("open", "empty"))
        units = unit >= 0
        cost = np.bincount(unit[units], weights=length[units]).astype(np.int64)
        unit_row = np.zeros(len(cost), np.int64)
        unit_row[unit[units]] = parts["row"][units]
        cum = np.cumsum(cost)
        row_end = np.zeros(n_rows, dtype=np.int64)
        np.maximum.at(row_end, unit_row, cum)
        suffix = row_end[unit_row] - cum + cost  # the cost of this item and every later one of its row
        kept = fixed[unit_row] + suffix + seg_len[first_open] - seg_len[self._piece("sep")] <= self.max_length
        n_kept = np.bincount(unit_row[kept], minlength=n_rows)
        self._check_fits(fixed + seg_len[empty], n_kept == 0)  # rows left with the empty-history rendering
        keep = ~units
        keep[units] = kept[unit[units]]
        parts = {k: v[keep] for k, v in parts.items()}
        first_unit = np.full(n_rows, len(cost))
        np.minimum.at(first_unit, unit_row[kept], np.flatnonzero(kept))
        opens = parts["opener"] & (parts["unit"] >= 0) & (parts["unit"] == first_unit[parts["row"]])
        parts["seg"] = np.where(opens, first_open, parts["seg"])
        emptied = self._parts(np.flatnonzero(n_kept == 0), 2 * history + 1, empty)
        return {k: np.concatenate([parts[k], emptied[k]]) for k in parts}

    def _check_fits(self, needed: np.ndarray, rows: np.ndarray | None = None):
        """Raise for the rows (all, or those of the mask `rows`) whose `needed` tokens exceed `max_length`."""
        too_long = needed > self.max_length if rows is None else rows & (needed > self.max_length)
        if too_long.any():
            bad = np.flatnonzero(too_long)[:5]
            raise ValueError(
                f"rows {bad.tolist()} need {needed[bad].tolist()} tokens without any history, more than "
                f"max_length={self.max_length}; the user and target item are never dropped"
            )

    def _translate(self, user_ids, histories, target_ids, similar=None):
        """
        Token ids, aligned item ids and row offsets (flat numpy arrays) for a batch, the `cf_history` matrix (or
        None) and each row's prefix length: the number of tokens before its `{target}` slot.
        """
        if self.item_titles is None:
            raise ValueError("no item titles: pass item_titles= or call set_item_titles() first")
        targets = as_int_array(target_ids)
        n_rows = len(targets)
        rows = np.arange(n_rows)
        self._check_items(targets, "target", rows)
        flat_hist, hist_off = to_ragged(histories if histories is not None else [[]] * n_rows)
        if len(hist_off) != n_rows + 1:
            raise ValueError(f"got {len(hist_off) - 1} histories for {n_rows} target items")
        cf_history = (
            latest_items(flat_hist, hist_off, self.cf_history_size)
            if self.cf_history_size and self.fusion.uses_cf
            else None
        )
        lengths = np.minimum(
            np.diff(hist_off), self.history_size
        )  # the last `history_size` items of each history
        hist_rows = np.repeat(rows, lengths)
        flat_hist = flat_hist[slice_indices(hist_off[1:] - lengths, lengths)]
        self._check_items(flat_hist, "history", hist_rows)
        if similar is not None:
            flat_sim, sim_off = to_ragged(similar)
            similar = (flat_sim, np.repeat(rows, np.diff(sim_off)))
            self._check_items(similar[0], "similar items", similar[1])
        blocks = [self._parts(rows, 2 * i, self._piece(f"literal{i}")) for i in range(len(self._slots) + 1)]
        blocks += [
            self._slot_parts(slot, 2 * i + 1, self._spaced[i], rows, targets, (flat_hist, hist_rows), similar)
            for i, slot in enumerate(self._slots)
        ]
        parts = self._fit({k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}, n_rows)
        order = np.lexsort((parts["sub"], parts["pos"], parts["row"]))
        part_row, part_pos, part_seg, part_mark = (parts[k][order] for k in ("row", "pos", "seg", "mark"))
        part_len = self._seg_len[part_seg]
        before_target = part_pos < 2 * self._slots.index("target") + 1
        prefix_len = np.bincount(part_row, weights=part_len * before_target, minlength=n_rows).astype(
            np.int64
        )
        tokens = self._store[slice_indices(self._seg_start[part_seg], part_len)]
        row_len = np.bincount(part_row, weights=part_len, minlength=n_rows).astype(np.int64)
        return tokens, np.repeat(part_mark, part_len), offsets_of(row_len), cf_history, prefix_len

    def __call__(
        self,
        user_ids=None,
        histories=None,
        target_item_ids=None,
        labels=None,
        similar_item_ids=None,
        return_tensors: str | None = "pt",
        padding_side: str | None = None,
    ) -> BatchFeature:
        """
        Translate a batch of rows into model inputs.

        Args:
            user_ids: `(batch,)` user ids (ignored in `text` mode).
            histories: one list of earlier positive item ids per row, oldest first.
            target_item_ids: `(batch,)` target item ids.
            labels: optional `(batch,)` click labels.
            similar_item_ids: per-row item lists for the pilot-study template's `{similar}` slot.
            return_tensors: `"pt"` for padded tensors (with `attention_mask`), `None` for lists of lists.
            padding_side: `"left"` (default: the tokenizer's) or `"right"` for `"pt"`.
        """
        tokens, token_item_ids, offsets, cf_history, _ = self._translate(
            user_ids, histories, target_item_ids, similar_item_ids
        )
        uses_cf = self.fusion.uses_cf
        if return_tensors == "pt":
            side = padding_side or getattr(self.tokenizer, "padding_side", "left")
            ids, mask = pad_ragged(tokens, offsets, side, self.tokenizer.pad_token_id)
            data = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            if uses_cf:
                data["token_item_ids"] = torch.from_numpy(pad_ragged(token_item_ids, offsets, side, 0)[0])
                data["user_ids"] = torch.from_numpy(as_int_array(user_ids))
            if cf_history is not None:
                data["cf_history"] = torch.from_numpy(cf_history)
            if labels is not None:
                data["labels"] = torch.as_tensor(np.asarray(labels))
            return BatchFeature(data)
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        data = {"input_ids": [a.tolist() for a in np.split(tokens, offsets[1:-1])]}
        if uses_cf:
            data["token_item_ids"] = [a.tolist() for a in np.split(token_item_ids, offsets[1:-1])]
            data["user_ids"] = as_int_array(user_ids).tolist()
        if cf_history is not None:
            data["cf_history"] = cf_history.tolist()
        if labels is not None:
            data["labels"] = list(labels)
        return BatchFeature(data)

    def ranking_inputs(self, user_ids, histories, candidate_item_ids, similar_item_ids=None) -> BatchFeature:
        """
        Inputs of `CCFLlamaForCTR.score_candidates` for ranking: each user's shared prompt prefix once, and every
        candidate's suffix.

        The hybrid prompt puts the history and the user feature before the target item, so the prompts of one
        user's candidates agree up to the `{target}` slot. Rows are built exactly as `__call__` builds them (so a
        prompt over `max_length` drops its oldest history items whole); candidates whose prefixes differ after that
        (a long title can drop one more history item) get their own prefix.

        Args:
            user_ids: `(users,)` user ids (ignored in `text` mode).
            histories: one list of earlier positive item ids per user, oldest first.
            candidate_item_ids: one list of candidate item ids per user (a list may be empty).
            similar_item_ids: per-user item lists for the pilot-study template's `{similar}` slot.

        Returns:
            A `BatchFeature` with `prefix_input_ids` / `prefix_attention_mask` / `prefix_token_item_ids`
            `(prefixes, P)` left-padded, `user_ids` / `cf_history` per prefix, and `input_ids` / `attention_mask` /
            `token_item_ids` `(candidates, S)` right-padded, in the order of the flattened candidate lists, with
            `prefix_index` `(candidates,)`: the prefix each candidate continues. Modes without CF have no
            `token_item_ids` / `user_ids`.
        """
        flat_cand, cand_off = to_ragged(candidate_item_ids)
        n_users = len(cand_off) - 1
        owner = np.repeat(np.arange(n_users), np.diff(cand_off))
        flat_hist, hist_off = to_ragged(histories if histories is not None else [[]] * n_users)
        if len(hist_off) != n_users + 1:
            raise ValueError(f"got {len(hist_off) - 1} histories for {n_users} candidate lists")
        uses_cf = self.fusion.uses_cf
        users = None
        if uses_cf:
            users = as_int_array(user_ids)
            if len(users) != n_users:
                raise ValueError(f"got {len(users)} user ids for {n_users} candidate lists")
            users = users[owner]
        similar = None
        if similar_item_ids is not None:
            similar = to_arrow(*take_rows(*to_ragged(similar_item_ids), owner))
        hist = to_arrow(*take_rows(flat_hist, hist_off, owner))
        tokens, token_item_ids, offsets, cf_history, prefix_len = self._translate(
            users, hist, flat_cand, similar
        )
        # one prefix per (user, prefix length): within a user, prefixes differ only by dropped history items
        _, first, prefix_index = np.unique(
            np.stack([owner, prefix_len], 1), axis=0, return_index=True, return_inverse=True
        )
        prefix_index = prefix_index.reshape(-1)
        starts, lengths = offsets[:-1], np.diff(offsets)
        prefix_off = offsets_of(prefix_len[first])
        prefix_at = slice_indices(starts[first], prefix_len[first])
        suffix_off = offsets_of(lengths - prefix_len)
        suffix_at = slice_indices(starts + prefix_len, lengths - prefix_len)
        pad_id = self.tokenizer.pad_token_id
        prefix_ids, prefix_mask = pad_ragged(tokens[prefix_at], prefix_off, "left", pad_id)
        suffix_ids, suffix_mask = pad_ragged(tokens[suffix_at], suffix_off, "right", pad_id)
        data = {
            "prefix_input_ids": prefix_ids,
            "prefix_attention_mask": prefix_mask,
            "input_ids": suffix_ids,
            "attention_mask": suffix_mask,
            "prefix_index": prefix_index,
        }
        if uses_cf:
            data["prefix_token_item_ids"] = pad_ragged(token_item_ids[prefix_at], prefix_off, "left", 0)[0]
            data["token_item_ids"] = pad_ragged(token_item_ids[suffix_at], suffix_off, "right", 0)[0]
            data["user_ids"] = users[first]
        if cf_history is not None:
            data["cf_history"] = cf_history[first]
        return BatchFeature({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()})

    def process_dataset(self, dataset, batch_size: int = 2048, **map_kwargs):
        """
        Translate a whole `datasets.Dataset` (columns `user_id`, `item_id`, `history`, optional `label` and
        `similar`) with `Dataset.map(batched=True)`, adding `input_ids`, `user_ids` (in every mode: `CCFTrainer`
        groups rows by user for UAUC), `token_item_ids` (modes with CF), `cf_history` (sequential CF sources) and
        `labels`. The original columns are kept (the Trainer drops them).
        """
        columns = set(dataset.column_names)
        missing = {"user_id", "item_id", "history"} - columns
        if missing:
            raise ValueError(f"the dataset lacks the columns {sorted(missing)} (has {sorted(columns)})")

        def translate(batch: pa.Table) -> pa.Table:
            similar = batch.column("similar") if "similar" in columns else None
            tokens, token_item_ids, offsets, cf_history, _ = self._translate(
                batch.column("user_id"), batch.column("history"), batch.column("item_id"), similar
            )
            off = pa.array(offsets.astype(np.int32))
            out = {"input_ids": pa.ListArray.from_arrays(off, pa.array(tokens.astype(np.int32))),
                   "user_ids": batch.column("user_id")}  # fmt: skip
            if self.fusion.uses_cf:
                out["token_item_ids"] = pa.ListArray.from_arrays(
                    off, pa.array(token_item_ids.astype(np.int32))
                )
            if cf_history is not None:
                out["cf_history"] = pa.FixedSizeListArray.from_arrays(
                    pa.array(cf_history.reshape(-1)), cf_history.shape[1]
                )
            if "label" in columns:
                out["labels"] = batch.column("label")
            for (
                name,
                column,
            ) in out.items():  # keep the original columns: map() replaces them by what we return
                index = batch.schema.get_field_index(name)
                batch = (
                    batch.set_column(index, name, column) if index >= 0 else batch.append_column(name, column)
                )
            return batch

        return (
            dataset.with_format("arrow")
            .map(translate, batched=True, batch_size=batch_size, **map_kwargs)
            .with_format(None)
        )


class CCFDataCollator:
    """
    Pads translated rows into a batch: `input_ids` with the pad id, `token_item_ids` with 0, an `attention_mask`,
    and stacks `user_ids`, `labels` and the fixed-width `cf_history`. Left padding by default, so the answer position
    is always the last column. Other keys are dropped.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "left", pad_to_multiple_of: int | None = None):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def _pad(self, sequences, value):
        padded = torch.nn.utils.rnn.pad_sequence(
            [torch.as_tensor(s, dtype=torch.long) for s in sequences],
            batch_first=True,
            padding_value=value,
            padding_side=self.padding_side,
        )
        if self.pad_to_multiple_of and padded.shape[1] % self.pad_to_multiple_of:
            extra = self.pad_to_multiple_of - padded.shape[1] % self.pad_to_multiple_of
            pad = (extra, 0) if self.padding_side == "left" else (0, extra)
            padded = torch.nn.functional.pad(padded, pad, value=value)
        return padded

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {"input_ids": self._pad([f["input_ids"] for f in features], self.pad_token_id)}
        batch["attention_mask"] = self._pad([[1] * len(f["input_ids"]) for f in features], 0)
        if "token_item_ids" in features[0]:
            batch["token_item_ids"] = self._pad([f["token_item_ids"] for f in features], 0)
        for key in ("user_ids", "labels", "cf_history"):
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch


__all__ = [
    "CCFDataCollator",
    "CCFLlamaProcessor",
    "PAPER_TEMPLATE",
    "PILOT_TEMPLATE",
    "TEXT_TEMPLATE",
]
