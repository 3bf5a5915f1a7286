import json

import pytest
import torch

from saekit.training.data import TextDocuments, TokenStream


class CharTokenizer:
    """ord() per character, EOS = 0: enough to check packing without transformers."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def stream(path, **kw):
    return TokenStream(TextDocuments(str(path)), CharTokenizer(), **kw)


def test_packs_documents_with_eos_and_wraps_epochs(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("ab\n\ncde\n")
    s = stream(f, seq_len=3, batch_size=2)
    assert s.next_batch().tolist() == [[97, 98, 0], [99, 100, 101]]
    assert s.next_batch().tolist() == [[0, 97, 98], [0, 99, 100]]
    assert s.epoch == 1


def test_resume_position_gives_the_same_batches(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(7)))
    s = stream(f, seq_len=5, batch_size=3)
    s.next_batch()
    state = s.state_dict()
    expected = [s.next_batch() for _ in range(4)]
    r = stream(f, seq_len=5, batch_size=3)
    r.load_state_dict(json.loads(json.dumps(state)))
    assert all((r.next_batch() == e).all() for e in expected)


def test_directory_of_files(tmp_path):
    (tmp_path / "b.txt").write_text("yz\n")
    (tmp_path / "a.txt").write_text("x\n")
    assert stream(tmp_path, seq_len=5, batch_size=1).next_batch().tolist() == [[120, 0, 121, 122, 0]]


def test_empty_dataset_is_a_clear_error(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty"):
        stream(f, seq_len=4, batch_size=1).next_batch()


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        TextDocuments(str(tmp_path / "missing.txt"))
    f = tmp_path / "a.jsonl"
    f.write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="text-field"):
        stream(f, seq_len=4, batch_size=1).next_batch()
    with pytest.raises(ValueError, match="another stream"):
        stream(f, seq_len=4, batch_size=1).load_state_dict({"kind": "text", "seq_len": 8, "batch_size": 1})
    for content, message in [('{"text": null}\n', "field 'text' is NoneType, not text"),
                             ('{"text": 3}\n', "field 'text' is int, not text"),
                             ('[{"text": "a"}]\n', "a JSON array, not one object per line")]:
        f.write_text(content)
        with pytest.raises(ValueError, match=message):
            stream(f, seq_len=4, batch_size=1).next_batch()
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.txt: not UTF-8 text"):
        stream(latin, seq_len=4, batch_size=1).next_batch()


def test_datasets_source_gives_the_same_stream_as_the_files(tmp_path, monkeypatch):
    """``hf:NAME`` goes through ``datasets.load_dataset``, here on a local directory (no network),
    and yields the same documents and batches as reading the files directly. Blank rows in the
    middle: a dataset's positions count them (files' do not), and resuming from any batch
    continues exactly as the uninterrupted stream."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "corpus"
    data.mkdir()
    docs = [f"document {i} " + "x" * (i % 4) for i in range(9)]
    rows = docs[:2] + ["", "   "] + docs[2:5] + [""] + docs[5:]
    (data / "part.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(rows)))
    hf = TextDocuments(f"hf:{data}:train")
    assert [t for _, t in hf.iterate(0)] == [t for _, t in TextDocuments(str(data)).iterate(0)] == docs
    assert [t for _, t in hf.iterate(4)] == docs[2:]  # row 4 is docs[2]
    s = TokenStream(hf, CharTokenizer(), seq_len=6, batch_size=2)
    f = stream(data, seq_len=6, batch_size=2)
    states, batches = [], []
    for _ in range(12):  # about two epochs
        states.append(s.state_dict())
        batches.append(s.next_batch())
        assert torch.equal(batches[-1], f.next_batch())
    for state, batch in zip(states, batches):
        resumed = TokenStream(TextDocuments(f"hf:{data}:train"), CharTokenizer(), seq_len=6, batch_size=2)
        resumed.load_state_dict(state)
        assert torch.equal(resumed.next_batch(), batch)
    with pytest.raises(ValueError, match="no column 'body'"):
        TextDocuments(f"hf:{data}", text_field="body")
