"""Text sources: .txt, .jsonl (text and chat messages), .parquet, datasets directories, and clear errors."""

from __future__ import annotations

import json

import pytest

from saeforge.text import ACCEPTED_SOURCES, SourceError, read_texts, render_messages

DOCS = ["First document,\nover two lines.", "Second document.", "Third: ünïcode ✓ text."]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n" + DOCS[0] + "\n\n\n" + DOCS[1] + "\n   \n" + DOCS[2] + "\n", encoding="utf-8")
    assert list(read_texts(path)) == DOCS
    assert list(read_texts(str(path))) == DOCS


def test_jsonl_text_and_chat_rows(tmp_path, tokenizer):
    messages = [
        {"role": "user", "content": "What does len do?"},
        {"role": "assistant", "content": "It counts."},
    ]
    path = tmp_path / "rows.jsonl"
    rows = [{"text": DOCS[0], "id": 1}, {"messages": messages}, {"text": ""}, {"text": DOCS[1]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    got = list(read_texts(path, tokenizer=tokenizer))
    chat = render_messages(messages, tokenizer)
    assert got == [DOCS[0], chat, DOCS[1]]
    assert chat == "<|user|>\nWhat does len do?<|eos|>\n<|assistant|>\nIt counts.<|eos|>\n"
    with pytest.raises(SourceError, match="need a tokenizer"):
        list(read_texts(path))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", r"rows\.jsonl:2: not valid JSON"),
        ('["a"]', "JSON object"),
        ('{"txt": "a"}', r"keys: \['txt'\]"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, line, expected):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(SourceError, match=expected):
        list(read_texts(path))


def test_chat_rows_need_a_chat_template(tiny_wordpiece_dir):
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(tiny_wordpiece_dir)
    with pytest.raises(SourceError, match="no chat template"):
        render_messages([{"role": "user", "content": "hi"}], bert)


def test_parquet_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": DOCS, "n": [1, 2, 3]}), path, row_group_size=2)
    assert list(read_texts(path)) == DOCS
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"body": DOCS}), bad)
    with pytest.raises(SourceError, match=r"needs a `text` or `messages` column; it has \['body'\]"):
        read_texts(bad)


def test_datasets_directories(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "single"))
    assert list(read_texts(tmp_path / "single")) == DOCS
    with pytest.raises(SourceError, match="has no splits"):
        read_texts(tmp_path / "single", split="train")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": DOCS[:2]}),
            "test": datasets.Dataset.from_dict({"text": DOCS[2:]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    assert list(read_texts(tmp_path / "dict", split="test")) == DOCS[2:]
    with pytest.raises(SourceError, match=r"choose a split.*\['test', 'train'\]"):
        read_texts(tmp_path / "dict")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(
        str(tmp_path / "one")
    )
    assert list(read_texts(tmp_path / "one")) == DOCS


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("missing.txt", "does not exist"),
        ("wikitext", "hub dataset id; saeforge never downloads"),
        ("Salesforce/wikitext", "hub dataset id"),
        ("builtin:validation", "builtin:heldout"),
    ],
)
def test_unknown_sources_list_accepted_forms(tmp_path, monkeypatch, source, expected):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=expected) as info:
        read_texts(source)
    assert "builtin" in str(info.value)


def test_wrong_kinds_of_local_paths(tmp_path):
    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(SourceError, match=r"unknown file type '\.csv'") as info:
        read_texts(tmp_path / "data.csv")
    assert ACCEPTED_SOURCES in str(info.value)
    with pytest.raises(SourceError, match="not one written by datasets' save_to_disk"):
        read_texts(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SourceError, match="files have no splits"):
        read_texts(tmp_path / "a.txt", split="train")
    with pytest.raises(SourceError, match="disagree"):
        read_texts("builtin:train", split="heldout")
