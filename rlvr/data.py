"""RLVR dataset rows: loading, validation, prompt rendering.

A row has `messages` (chat list) or `prompt` (str), `ground_truth` (str or JSON) and
`verifier` (the column `dataset` is accepted as an alias, as in allenai/RLVR-* datasets).
Rows load from a hub id, a local JSONL/JSON/Parquet file, or a folder. A bad row is an
error naming the row, raised when the data is loaded, never in the middle of a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rlvr.rollouts import derive_seed
from rlvr.verifiers import UnknownVerifierError, canonical_name, get_verifier


class DataError(ValueError):
    pass


def load_rows(source: str, split: str = "train") -> list[dict]:
    """Rows from a local file or folder (read with `datasets`), or a hub dataset id."""
    import datasets

    path = Path(source)
    if path.is_file() and path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.is_dir() and (path / f"{split}.jsonl").is_file():
        return _read_jsonl(path / f"{split}.jsonl")
    if path.is_file():
        kind = {".json": "json", ".parquet": "parquet"}.get(path.suffix)
        if kind is None:
            raise DataError(f"{source}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    elif path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(str(path), split=split)
    elif source.startswith((".", "/")) or source.endswith((".jsonl", ".json", ".parquet")):
        raise DataError(f"data file not found: {source}")
    else:
        ds = datasets.load_dataset(source, split=split)  # a hub dataset id
    return [dict(r) for r in ds]


def iter_jsonl(path: Path):
    """(line number, row) for each non-blank line; a line that is not a JSON object is a DataError."""
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {lineno}: a row must be a JSON object")
            yield lineno, row


def _read_jsonl(path: Path) -> list[dict]:
    """JSONL read as written: Arrow would unify a column that is a string in one row and a
    list or object in another (common for `ground_truth`), changing the values."""
    return [row for _, row in iter_jsonl(path)]


def normalize_rows(rows: list[dict], source: str) -> list[dict]:
    """Check every row and return `{"prompt" | "messages", "ground_truth", "verifier"}` dicts."""
    out = []
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        verifier = row.get("verifier") or row.get("dataset")  # files with both shapes give None for the absent one
        if isinstance(verifier, list) and len(verifier) == 1:  # allenai/RLVR-* store ["gsm8k"]
            verifier = verifier[0]
        if not isinstance(verifier, str) or not verifier:
            raise DataError(f"{where}: missing 'verifier' (or 'dataset') column")
        try:
            verifier = canonical_name(verifier)
        except UnknownVerifierError as e:
            raise DataError(f"{where}: {e}") from None
        fn = get_verifier(verifier)
        if "ground_truth" not in row or row["ground_truth"] is None:
            raise DataError(f"{where}: missing 'ground_truth'")
        gt = row["ground_truth"]
        if isinstance(gt, list) and len(gt) == 1:
            gt = gt[0]
        validate = getattr(fn, "validate", None)  # a verifier may check its ground truth up front
        if validate is not None:
            try:
                validate(gt)
            except Exception as e:
                raise DataError(f"{where}: invalid ground truth for {verifier}: {e}") from None
        new: dict[str, Any] = {"ground_truth": gt, "verifier": verifier}
        if isinstance(row.get("messages"), list) and row["messages"]:
            msgs = row["messages"]
            if msgs[-1].get("role") == "assistant":  # a reference answer is not part of the prompt
                msgs = msgs[:-1]
            new["messages"] = [{"role": m["role"], "content": m["content"]} for m in msgs]
        elif isinstance(row.get("prompt"), str) and row["prompt"]:
            new["prompt"] = row["prompt"]
        else:
            raise DataError(f"{where}: needs a non-empty 'messages' list or 'prompt' string")
        out.append(new)
    if not out:
        raise DataError(f"{source}: no rows")
    return out


def encode_prompts(rows: list[dict], tokenizer, max_tokens: int, source: str) -> list[list[int]]:
    """Each row's prompt as the model sees it (rlvr.chat.prompt_ids: `messages` through the
    model's chat template); a prompt over `max_tokens` or of no tokens is a DataError naming the row."""
    from rlvr.chat import prompt_ids

    ids = []
    for i, row in enumerate(rows):
        toks = prompt_ids(tokenizer, row)
        if len(toks) > max_tokens:
            raise DataError(f"{source} row {i}: prompt has {len(toks)} tokens, over data.max_prompt_tokens={max_tokens}")
        if not toks:
            raise DataError(f"{source} row {i}: prompt encodes to no tokens")
        ids.append(toks)
    return ids


def ground_truth_text(gt: Any) -> str:
    return gt if isinstance(gt, str) else json.dumps(gt)


class PromptSampler:
    """Epochs over the rows in a seeded order; its state (epoch, index) goes into checkpoints."""

    def __init__(self, num_rows: int, seed: int):
        self.num_rows, self.seed = num_rows, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, self.epoch)).permutation(self.num_rows)

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index == self.num_rows:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(int(self._order[self.index]))
            self.index += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation()


# ------------------------------------------------------------------------------------ real datasets


def gsm8k_rows(source: str | Path, limit: int | None = None, with_answer: bool = False, split: str = "train") -> list[dict]:
    """RLVR rows from GSM8K rows (`question`, `answer` ending `#### N`; a file, folder or hub id);
    `with_answer` keeps the worked solution as an assistant turn (SFT data)."""
    rows = []
    for raw in load_rows(str(source), split)[:limit]:
        messages = [{"role": "user", "content": raw["question"]}]
        if with_answer:
            messages.append({"role": "assistant", "content": raw["answer"]})
        rows.append({"messages": messages, "ground_truth": raw["answer"].rsplit("####", 1)[1].strip(), "verifier": "gsm8k"})
    return rows


def math_rows(source: str | Path, limit: int | None = None, with_answer: bool = False, split: str = "train") -> list[dict]:
    """RLVR rows from MATH rows (`problem`, `solution`, `answer`; a file, folder or hub id such as
    HuggingFaceH4/MATH-500 with split test)."""
    rows = []
    for raw in load_rows(str(source), split)[:limit]:
        messages = [{"role": "user", "content": raw["problem"]}]
        if with_answer:
            messages.append({"role": "assistant", "content": raw["solution"]})
        rows.append({"messages": messages, "ground_truth": raw["answer"], "verifier": "math"})
    return rows


def ifeval_rows(source: str | Path, limit: int | None = None, split: str = "train") -> list[dict]:
    """RLVR rows from Google's IFEval rows (`prompt`, `instruction_id_list`, `kwargs`; a file,
    folder or hub id such as google/IFEval), checked by the `ifeval` verifier."""
    rows = []
    for raw in load_rows(str(source), split)[:limit]:
        truth = {"instruction_id_list": raw["instruction_id_list"], "kwargs": raw["kwargs"]}
        rows.append({"messages": [{"role": "user", "content": raw["prompt"]}], "ground_truth": json.dumps(truth), "verifier": "ifeval"})
    return rows
