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

import numpy as np
import pyarrow as pa
import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .configuration_ccf_llama import FUSION_MODES

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


def _ragged(values) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, offsets) of a list of lists, a pyarrow ListArray or ChunkedArray, without a Python loop."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, (pa.ListArray, pa.LargeListArray)):
        offsets = values.offsets.to_numpy().astype(np.int64)
        flat = values.values.to_numpy(zero_copy_only=False).astype(np.int64)
        return flat[offsets[0] : offsets[-1]], offsets - offsets[0]
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    flat = np.fromiter(chain.from_iterable(values), dtype=np.int64, count=int(lengths.sum()))
    return flat, np.concatenate([[0], np.cumsum(lengths)])


def latest_items(flat: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """`(rows, k)`: each row's last `k` items of a ragged list (flat values, offsets), left-padded with 0."""
    lengths = np.minimum(np.diff(offsets), k)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    matrix = np.zeros((len(lengths), k), dtype=np.int64)
    matrix[rows, k - lengths[rows] + within] = flat[offsets[1:][rows] - lengths[rows] + within]
    return matrix


def _ragged_take(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, offsets) of the ragged rows `rows` of a ragged list (flat values, offsets), in that order."""
    lengths = np.diff(offsets)[rows]
    return flat[_slices(offsets[:-1][rows], lengths)], np.concatenate([[0], np.cumsum(lengths)])


def _slices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices of the slices `[start, start + length)`, concatenated."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))


def _pad(values: np.ndarray, offsets: np.ndarray, side: str, pad_value: int) -> tuple[np.ndarray, np.ndarray]:
    """A ragged list (flat values, offsets) as a padded `(rows, width)` matrix and its 0/1 mask."""
    lengths = np.diff(offsets)
    n_rows, width = len(lengths), int(lengths.max(initial=0))
    rows = np.repeat(np.arange(n_rows), lengths)
    cols = np.arange(len(values)) - offsets[rows]
    if side == "left":
        cols = cols + (width - lengths)[rows]
    matrix = np.full((n_rows, width), pad_value, dtype=np.int64)
    matrix[rows, cols] = values
    mask = np.zeros((n_rows, width), dtype=np.int64)
    mask[rows, cols] = 1
    return matrix, mask


def _as_int_array(values) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_numpy(zero_copy_only=False).astype(np.int64)
    return np.asarray(values, dtype=np.int64).reshape(-1)


class CCFLlamaProcessor(ProcessorMixin):
    r"""
    Hybrid prompt translation for CCF-LLM (§3.2).

    Each row `(user_id, history, target_item_id)` becomes the template with
    * `{history}`: the last `history_size` items of `history` (oldest first), each as its title in double quotes,
      joined with `", "`; an empty history renders as `empty_history` ("none" by default);
    * `{user}`: the user placeholder token (replaced by ALG(x_u^CF) in the model);
    * `{target}`: the target item's title in double quotes;
    * `{similar}` (pilot-study template only): titles of CF-recommended items, as plain text.

    The output holds, aligned with `input_ids`, `item_ids`: the item each title token belongs to (fusion modes) or
    the item of each CF placeholder token, which `inject` mode adds after every title (CoLLM); `text` mode returns
    no CF fields. Prompts longer than `max_length` drop their oldest history items whole: a title is never cut,
    and the user and target are never dropped.

    Titles are tokenized on their own, once, with special-token parsing off: a title containing `<|user_cf|>` or
    `<|im_end|>` stays text and can never act as a placeholder. Literal template text is tokenized as is.

    Args:
        tokenizer: the LLM's tokenizer, holding the placeholder tokens (see `CCFLlamaForCTR.from_llm`).
        item_titles (`Mapping[int, str]` or `Sequence[str | None]`, *optional*):
            Title of each item id (a sequence is indexed by id; index 0 is the padding id and unused).
        fusion_mode (`str`, defaults to `"gate"`): the model's fusion mode (see `FUSION_MODES`).
        template (`str`, *optional*): the prompt template; defaults to `PAPER_TEMPLATE` (`TEXT_TEMPLATE` in `text`
            mode).
        history_size (`int`, defaults to 10): how many of the latest history items enter the prompt (CoLLM: 10).
        max_length (`int`, defaults to 700): the maximum prompt length in tokens (the paper's 700).
        empty_history (`str`, defaults to `"none"`): the rendering of an empty history.
        user_token / item_token (`str`): the placeholder tokens.
        cf_history_size (`int`, defaults to 0): when > 0, also return `cf_history`, each row's latest
            `cf_history_size` history items left-padded with 0: the input of a sequential CF source (SASRec: 25,
            `model.config.max_cf_history`).
    """

    def __init__(
        self,
        tokenizer=None,
        item_titles=None,
        fusion_mode: str = "gate",
        template: str | None = None,
        history_size: int = 10,
        max_length: int = 700,
        empty_history: str = "none",
        user_token: str = "<|user_cf|>",
        item_token: str = "<|item_cf|>",
        cf_history_size: int = 0,
        **kwargs,
    ):
        if fusion_mode not in FUSION_MODES:
            raise ValueError(f"fusion_mode must be one of {FUSION_MODES}, got {fusion_mode!r}")
        if history_size < 0 or max_length < 1:
            raise ValueError(
                f"history_size must be >= 0 and max_length >= 1, got {history_size} and {max_length}"
            )
        self.fusion_mode = fusion_mode
        self.template = (
            template if template is not None else (TEXT_TEMPLATE if fusion_mode == "text" else PAPER_TEMPLATE)
        )
        self.history_size = history_size
        self.max_length = max_length
        self.empty_history = empty_history
        self.user_token = user_token
        self.item_token = item_token
        self.cf_history_size = cf_history_size
        super().__init__(tokenizer, **kwargs)
        self._compile_template()
        self.item_titles = None
        if item_titles is not None:
            self.set_item_titles(item_titles)

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
        uses_cf = self.fusion_mode != "text"
        if counts["user"] and not uses_cf:
            raise ValueError(
                "fusion_mode='text' carries no CF signal, so its template cannot have a {user} slot"
            )
        if uses_cf:
            vocab = self.tokenizer.get_vocab()
            needed = [self.user_token] * bool(counts["user"]) + [self.item_token] * (
                self.fusion_mode == "inject"
            )
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
        open_space = ' "' if any(spaced) else '"'
        piece_texts = {
            "open": '"',
            "open_space": open_space,
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
        if uses_cf:
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
        ids = _as_int_array(item_ids)
        self._check_items(ids, "item list", np.arange(len(ids)))
        lengths = self._seg_len[ids]
        tokens = self._store[_slices(self._seg_start[ids], lengths)]
        matrix, mask = _pad(
            tokens, np.concatenate([[0], np.cumsum(lengths)]), "right", self.tokenizer.pad_token_id
        )
        return torch.from_numpy(matrix), torch.from_numpy(mask)

    def _piece(self, name: str) -> int:
        return self._num_title_segments + self._piece_ids[name]

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

    def _item_blocks(self, items, rows, index, slot_pos, spaced, marked, inject):
        """Parts of a quoted item list: open/sep, title, close (+ CF token). Returns the 5 part columns."""
        k = 4 if inject else 3
        n = len(items)
        opener = np.where(index == 0, self._piece("open_space" if spaced else "open"), self._piece("sep"))
        cf_token = (
            self._piece("item") if inject else self._piece("close")
        )  # the 4th column is used by inject only
        seg = np.stack([opener, items, np.full(n, self._piece("close")), np.full(n, cf_token)], 1)[:, :k]
        mark = np.zeros((n, 4), dtype=np.int64)
        mark[:, 1 if marked and not inject else 3] = items if marked else 0
        sub = index[:, None] * 4 + np.arange(k)
        return (
            np.repeat(rows, k),
            np.full(n * k, slot_pos),
            sub.reshape(-1),
            seg.reshape(-1),
            mark[:, :k].reshape(-1),
        )

    def cf_history(self, histories) -> torch.LongTensor:
        """
        `(rows, cf_history_size)`: each history's latest `cf_history_size` items, left-padded with 0, as the prompts'
        `cf_history` carries them (the input of a sequential CF source; e.g. for
        `CCFLlamaForCTR.fit_cf_standardization` over the training rows).
        """
        if not self.cf_history_size:
            raise ValueError("this processor has cf_history_size=0: its prompts carry no cf_history")
        flat_hist, hist_off = _ragged(histories)
        return torch.from_numpy(latest_items(flat_hist, hist_off, self.cf_history_size))

    def _translate(self, user_ids, histories, target_ids, similar=None):
        """
        Token ids, aligned item ids and row offsets (flat numpy arrays) for a batch, the `cf_history` matrix (or
        None) and each row's prefix length: the number of tokens before its `{target}` slot.
        """
        if self.item_titles is None:
            raise ValueError("no item titles: pass item_titles= or call set_item_titles() first")
        targets = _as_int_array(target_ids)
        n_rows = len(targets)
        rows = np.arange(n_rows)
        self._check_items(targets, "target", rows)
        mode = self.fusion_mode
        marked, inject = mode != "text", mode == "inject"
        extra = 1 if inject else 0  # the CF token after each title in inject mode
        flat_hist, hist_off = _ragged(histories if histories is not None else [[]] * n_rows)
        if len(hist_off) != n_rows + 1:
            raise ValueError(f"got {len(hist_off) - 1} histories for {n_rows} target items")
        cf_history = (
            latest_items(flat_hist, hist_off, self.cf_history_size)
            if self.cf_history_size and marked
            else None
        )
        # keep the last `history_size` items of each history
        lengths = np.diff(hist_off)
        starts = hist_off[1:] - np.minimum(lengths, self.history_size)
        hist_rows = np.repeat(rows, lengths)
        keep = np.arange(len(flat_hist)) >= starts[hist_rows]
        flat_hist, hist_rows = flat_hist[keep], hist_rows[keep]
        self._check_items(flat_hist, "history", hist_rows)
        seg_len = self._seg_len
        p = self._piece
        # length of everything but the history: literals, user token, target, similar items
        literal_len = sum(seg_len[p(f"literal{i}")] for i in range(len(self._slots) + 1))
        base = np.full(n_rows, literal_len, dtype=np.int64)
        base += seg_len[p("open")] + seg_len[targets] + seg_len[p("close")] + extra
        if "user" in self._slots:
            base += 1
        if "target" in self._slots and self._spaced[self._slots.index("target")]:
            base += seg_len[p("open_space")] - seg_len[p("open")]
        flat_sim = sim_rows = None
        if "similar" in self._slots:
            if similar is None:
                raise ValueError("the template has a {similar} slot: pass similar_item_ids=")
            flat_sim, sim_off = _ragged(similar)
            sim_rows = np.repeat(rows, np.diff(sim_off))
            self._check_items(flat_sim, "similar items", sim_rows)
            sim_cost = seg_len[flat_sim] + seg_len[p("sep")] + seg_len[p("close")]
            base += np.bincount(sim_rows, weights=sim_cost, minlength=n_rows).astype(np.int64)
            # the first item opens with a quote, not with the separator
            sim_open = seg_len[p("open_space" if self._spaced[self._slots.index("similar")] else "open")]
            base -= (np.diff(sim_off) > 0) * (seg_len[p("sep")] - sim_open)
        has_history = "history" in self._slots
        if has_history:
            spaced = self._spaced[self._slots.index("history")]
            first_open = seg_len[p("open_space" if spaced else "open")]
            empty_len = seg_len[p("empty_space" if spaced else "empty")]
            # drop the oldest items whole until the prompt fits: keep the longest suffix that fits
            cost = seg_len[flat_hist] + seg_len[p("sep")] + seg_len[p("close")] + extra
            cum = np.cumsum(cost)
            row_end = np.zeros(n_rows, dtype=np.int64)
            np.maximum.at(row_end, hist_rows, cum)
            suffix = row_end[hist_rows] - cum + cost
            fits = base[hist_rows] + suffix - (seg_len[p("sep")] - first_open) <= self.max_length
            flat_hist, hist_rows = flat_hist[fits], hist_rows[fits]
            kept = np.bincount(hist_rows, minlength=n_rows)
            too_long = (kept == 0) & (base + empty_len > self.max_length)
        else:
            too_long = base > self.max_length
        if too_long.any():
            bad = np.flatnonzero(too_long)[:5]
            raise ValueError(
                f"rows {bad.tolist()} need {base[bad].tolist()} tokens without any history, more than "
                f"max_length={self.max_length}; the user and target item are never dropped"
            )

        # assemble parts (row, slot position, sub-order, segment, item mark), then sort them into prompt order
        def single(part_rows, pos, piece):  # one unmarked piece per row, e.g. a literal or the user token
            n = len(part_rows)
            zeros = np.zeros(n, np.int64)
            return part_rows, np.full(n, pos), zeros, np.full(n, p(piece)), zeros

        blocks = [single(rows, 2 * i, f"literal{i}") for i in range(len(self._slots) + 1)]
        for i, slot in enumerate(self._slots):
            pos = 2 * i + 1
            if slot == "user":
                blocks.append(single(rows, pos, "user"))
            elif slot == "target":
                blocks.append(
                    self._item_blocks(
                        targets, rows, np.zeros(n_rows, np.int64), pos, self._spaced[i], marked, inject
                    )
                )
            elif slot == "history":
                index = np.arange(len(hist_rows)) - np.searchsorted(hist_rows, hist_rows)
                blocks.append(
                    self._item_blocks(flat_hist, hist_rows, index, pos, self._spaced[i], marked, inject)
                )
                blocks.append(
                    single(np.flatnonzero(kept == 0), pos, "empty_space" if self._spaced[i] else "empty")
                )
            else:  # similar: plain-text titles, never fused
                index = np.arange(len(sim_rows)) - np.searchsorted(sim_rows, sim_rows)
                blocks.append(
                    self._item_blocks(flat_sim, sim_rows, index, pos, self._spaced[i], False, False)
                )
        part_row, part_pos, part_sub, part_seg, part_mark = (
            np.concatenate(c) for c in zip(*blocks, strict=True)
        )
        order = np.lexsort((part_sub, part_pos, part_row))
        part_row, part_pos, part_seg, part_mark = (
            part_row[order], part_pos[order], part_seg[order], part_mark[order]
        )  # fmt: skip
        part_len = seg_len[part_seg]
        before_target = part_pos < 2 * self._slots.index("target") + 1
        prefix_len = np.bincount(part_row, weights=part_len * before_target, minlength=n_rows).astype(
            np.int64
        )
        part_start = np.cumsum(part_len) - part_len
        within = np.arange(int(part_len.sum())) - np.repeat(part_start, part_len)
        tokens = self._store[np.repeat(self._seg_start[part_seg], part_len) + within]
        item_ids = np.repeat(part_mark, part_len)
        row_len = np.bincount(part_row, weights=part_len, minlength=n_rows).astype(np.int64)
        return tokens, item_ids, np.concatenate([[0], np.cumsum(row_len)]), cf_history, prefix_len

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
        tokens, item_ids, offsets, cf_history, _ = self._translate(
            user_ids, histories, target_item_ids, similar_item_ids
        )
        data = {}
        if return_tensors == "pt":
            side = padding_side or getattr(self.tokenizer, "padding_side", "left")
            ids, mask = _pad(tokens, offsets, side, self.tokenizer.pad_token_id)
            items, _ = _pad(item_ids, offsets, side, 0)
            data = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            if self.fusion_mode != "text":
                data["item_ids"] = torch.from_numpy(items)
                data["user_ids"] = torch.from_numpy(_as_int_array(user_ids))
            if cf_history is not None:
                data["cf_history"] = torch.from_numpy(cf_history)
            if labels is not None:
                data["labels"] = torch.as_tensor(np.asarray(labels))
            return BatchFeature(data)
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        split = np.split(tokens, offsets[1:-1])
        data["input_ids"] = [a.tolist() for a in split]
        if self.fusion_mode != "text":
            data["item_ids"] = [a.tolist() for a in np.split(item_ids, offsets[1:-1])]
            data["user_ids"] = _as_int_array(user_ids).tolist()
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
            A `BatchFeature` with `prefix_input_ids` / `prefix_attention_mask` / `prefix_item_ids` `(prefixes, P)`
            left-padded, `user_ids` / `cf_history` per prefix, and `input_ids` / `attention_mask` / `item_ids`
            `(candidates, S)` right-padded, in the order of the flattened candidate lists, with `prefix_index`
            `(candidates,)`: the prefix each candidate continues. `text` mode has no `item_ids` / `user_ids`.
        """
        flat_cand, cand_off = _ragged(candidate_item_ids)
        n_users = len(cand_off) - 1
        owner = np.repeat(np.arange(n_users), np.diff(cand_off))
        flat_hist, hist_off = _ragged(histories if histories is not None else [[]] * n_users)
        if len(hist_off) != n_users + 1:
            raise ValueError(f"got {len(hist_off) - 1} histories for {n_users} candidate lists")
        uses_cf = self.fusion_mode != "text"
        users = None
        if uses_cf:
            users = _as_int_array(user_ids)
            if len(users) != n_users:
                raise ValueError(f"got {len(users)} user ids for {n_users} candidate lists")
            users = users[owner]
        similar = None
        if similar_item_ids is not None:
            similar = pa.LargeListArray.from_arrays(
                *reversed(_ragged_take(*_ragged(similar_item_ids), owner))
            )
        hist = pa.LargeListArray.from_arrays(*reversed(_ragged_take(flat_hist, hist_off, owner)))
        tokens, item_ids, offsets, cf_history, prefix_len = self._translate(users, hist, flat_cand, similar)
        # one prefix per (user, prefix length): within a user, prefixes differ only by dropped history items
        _, first, prefix_index = np.unique(
            np.stack([owner, prefix_len], 1), axis=0, return_index=True, return_inverse=True
        )
        prefix_index = prefix_index.reshape(-1)
        starts, lengths = offsets[:-1], np.diff(offsets)
        prefix_off = np.concatenate([[0], np.cumsum(prefix_len[first])])
        prefix_at = _slices(starts[first], prefix_len[first])
        suffix_off = np.concatenate([[0], np.cumsum(lengths - prefix_len)])
        suffix_at = _slices(starts + prefix_len, lengths - prefix_len)
        pad_id = self.tokenizer.pad_token_id
        prefix_ids, prefix_mask = _pad(tokens[prefix_at], prefix_off, "left", pad_id)
        suffix_ids, suffix_mask = _pad(tokens[suffix_at], suffix_off, "right", pad_id)
        data = {
            "prefix_input_ids": prefix_ids,
            "prefix_attention_mask": prefix_mask,
            "input_ids": suffix_ids,
            "attention_mask": suffix_mask,
            "prefix_index": prefix_index,
        }
        if uses_cf:
            data["prefix_item_ids"] = _pad(item_ids[prefix_at], prefix_off, "left", 0)[0]
            data["item_ids"] = _pad(item_ids[suffix_at], suffix_off, "right", 0)[0]
            data["user_ids"] = users[first]
        if cf_history is not None:
            data["cf_history"] = cf_history[first]
        return BatchFeature({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()})

    def process_dataset(self, dataset, batch_size: int = 2048, **map_kwargs):
        """
        Translate a whole `datasets.Dataset` (columns `user_id`, `item_id`, `history`, optional `label` and
        `similar`) with `Dataset.map(batched=True)`, adding `input_ids` (+ `item_ids`, `user_ids` outside `text`
        mode) and `labels`. The original columns are kept (the Trainer drops them; UAUC needs `user_id`).
        """
        columns = set(dataset.column_names)
        missing = {"user_id", "item_id", "history"} - columns
        if missing:
            raise ValueError(f"the dataset lacks the columns {sorted(missing)} (has {sorted(columns)})")

        def translate(batch: pa.Table) -> pa.Table:
            similar = batch.column("similar") if "similar" in columns else None
            tokens, item_ids, offsets, cf_history, _ = self._translate(
                batch.column("user_id"), batch.column("history"), batch.column("item_id"), similar
            )
            off = pa.array(offsets.astype(np.int32))
            out = {"input_ids": pa.ListArray.from_arrays(off, pa.array(tokens.astype(np.int32)))}
            if self.fusion_mode != "text":
                out["item_ids"] = pa.ListArray.from_arrays(off, pa.array(item_ids.astype(np.int32)))
                out["user_ids"] = batch.column("user_id")
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
    Pads translated rows into a batch: `input_ids` with the pad id, `item_ids` with 0, an `attention_mask`, and
    stacks `user_ids`, `labels` and the fixed-width `cf_history`. Left padding by default, so the answer position
    is always the last column. `user_id` (the raw column) is stacked too: `CCFTrainer` reads it as a label for UAUC
    in every mode, `text` included. Other keys are dropped.
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
        if "item_ids" in features[0]:
            batch["item_ids"] = self._pad([f["item_ids"] for f in features], 0)
        for key in ("user_ids", "labels", "cf_history", "user_id"):
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch


__all__ = [
    "CCFDataCollator",
    "CCFLlamaProcessor",
    "PAPER_TEMPLATE",
    "PILOT_TEMPLATE",
    "TEXT_TEMPLATE",
    "latest_items",
]
