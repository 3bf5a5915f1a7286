"""Token streaming from text: local files or a `datasets` dataset, packed into fixed-length
sequences, with a position that a checkpoint can store and restore exactly.

Documents are tokenized one at a time (no special tokens), each followed by the tokenizer's
EOS token when it has one, and concatenated; sequence i is the next ``seq_len`` tokens of that
stream. The position is (epoch, document, token offset inside the document); at the end of
the data the stream starts the next epoch from the first document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")


def _file_documents(files: list[Path], text_field: str) -> Iterator[str]:
    for file in files:
        try:
            yield from _documents_of(file, text_field)
        except UnicodeDecodeError as e:
            raise ValueError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _documents_of(file: Path, text_field: str) -> Iterator[str]:
    with open(file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if file.suffix == ".txt":
                text = line.rstrip("\n")
            else:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{file}:{line_no}: not a JSON line ({e}); .json and .jsonl files "
                                     "hold one JSON object per line") from None
                if not isinstance(record, dict) or text_field not in record:
                    what = "a JSON array, not one object per line" if isinstance(record, list) else \
                        f"no {text_field!r} field (use --text-field)"
                    raise ValueError(f"{file}:{line_no}: {what}")
                text = record[text_field]
                if not isinstance(text, str):
                    raise ValueError(f"{file}:{line_no}: field {text_field!r} is {type(text).__name__}, not text")
            if text.strip():
                yield text


class TextDocuments:
    """Documents of a text source, re-readable from any document index.

    ``spec``: a ``.txt`` file (one document per non-empty line), a ``.jsonl`` file (one JSON
    object per line, text under ``text_field``), a directory of such files (sorted by name), or
    ``hf:NAME[:SPLIT]`` for a `datasets` dataset (split "train" by default).
    """

    def __init__(self, spec: str, *, text_field: str = "text"):
        self.spec = str(spec)
        self.text_field = text_field
        self._dataset = None
        if self.spec.startswith("hf:"):
            name, _, split = self.spec[3:].partition(":")
            try:
                import datasets
            except ImportError:
                raise ValueError(f"--data {self.spec}: needs the datasets package (pip install datasets)") from None
            self._dataset = datasets.load_dataset(name, split=split or "train")
            if text_field not in self._dataset.column_names:
                raise ValueError(f"--data {self.spec}: no column {text_field!r} (has {self._dataset.column_names})")
            return
        path = Path(self.spec)
        if path.is_dir():
            self.files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not self.files:
                raise ValueError(f"--data {path}: no {'/'.join(TEXT_SUFFIXES)} files in this directory")
        elif path.is_file():
            self.files = [path]
        else:
            raise ValueError(f"--data {path}: no such file or directory")

    def iterate(self, start: int = 0) -> Iterator[tuple[int, str]]:
        """(position, text) of the documents from position ``start`` on; ``iterate(position)``
        starts at that document again. Positions count the non-empty documents of files, and
        the rows (empty ones included) of a dataset, so a dataset resumes without a scan."""
        if self._dataset is not None:
            for i in range(start, len(self._dataset)):
                text = self._dataset[i][self.text_field]
                if isinstance(text, str) and text.strip():
                    yield i, text
            return
        for i, text in enumerate(_file_documents(self.files, self.text_field)):
            if i >= start:
                yield i, text


class TokenStream:
    """Batches of token ids [batch_size, seq_len] from ``documents`` and ``tokenizer``.

    ``state_dict()`` / ``load_state_dict()`` give and restore the position exactly; an empty
    source raises ValueError at the first batch.
    """

    def __init__(self, documents: TextDocuments, tokenizer, *, seq_len: int = 128, batch_size: int = 8):
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2 (one next-token target), got {seq_len}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.documents = documents
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.eos = getattr(tokenizer, "eos_token_id", None)
        self.epoch = self.doc = self.offset = 0
        self._reset_iterator()

    def _reset_iterator(self) -> None:
        self._docs = self.documents.iterate(self.doc)
        self._tokens = None  # token ids of the document at position self.doc, tokenized lazily
        self._started = False  # whether any document was read since the last reset

    def _encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return ids + ([self.eos] if self.eos is not None else [])

    def _take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self._tokens is None:
                position, text = next(self._docs, (None, None))
                if text is None:
                    if self.doc == 0 and not self._started:
                        raise ValueError(f"--data {self.documents.spec}: the dataset has no text (empty)")
                    self.epoch, self.doc, self.offset = self.epoch + 1, 0, 0
                    self._reset_iterator()
                    continue
                self.doc, self._started = position, True
                self._tokens = self._encode(text)
            chunk = self._tokens[self.offset:self.offset + n - len(out)]
            out.extend(chunk)
            self.offset += len(chunk)
            if self.offset >= len(self._tokens):
                self.doc, self.offset, self._tokens = self.doc + 1, 0, None
        return out

    def next_batch(self) -> torch.Tensor:
        """[batch_size, seq_len] int64 token ids."""
        ids = self._take(self.batch_size * self.seq_len)
        return torch.tensor(ids, dtype=torch.long).view(self.batch_size, self.seq_len)

    def state_dict(self) -> dict:
        return {"kind": "text", "spec": self.documents.spec, "epoch": self.epoch, "doc": self.doc,
                "offset": self.offset, "seq_len": self.seq_len, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "text" or (state["seq_len"], state["batch_size"]) != (self.seq_len, self.batch_size):
            raise ValueError(f"data position {state} was saved for another stream "
                             f"(seq_len={self.seq_len}, batch_size={self.batch_size} here)")
        self.epoch, self.doc, self.offset = int(state["epoch"]), int(state["doc"]), int(state["offset"])
        self._reset_iterator()
