"""Broken input files are one line naming the file (and line) and the fix: a corpus with bytes that
are not UTF-8, a binary file given as a corpus, a truncated model.safetensors."""

from __future__ import annotations

import shutil

import pytest

from kdyn.data.corpora import load_documents
from kdyn.errors import KdynError


def test_jsonl_with_invalid_utf8_names_file_line_and_column(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "fine"}\n\n{"text": "caf\xe9 au lait"}\n')
    with pytest.raises(KdynError) as info:
        load_documents({"name": "text", "path": str(path)})
    assert str(info.value).startswith(f"{path}:3:14: byte 0xe9 is not UTF-8")
    assert "\n" not in str(info.value)


def test_text_file_with_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_bytes(b"first paragraph\n\nsecond\nna\xefve\n")
    with pytest.raises(KdynError, match=r"docs.txt:4:3: byte 0xef is not UTF-8"):
        load_documents({"name": "text", "path": str(path)})


def test_binary_file_as_corpus(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(KdynError, match="binary file, not a text corpus"):
        load_documents({"name": "text", "path": str(path)})


def test_valid_utf8_and_crlf_still_read(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_bytes("café one\r\nline two\r\n\r\nnaïve three\r\n".encode())
    assert load_documents({"name": "text", "path": str(path)}) == ["café one\nline two", "naïve three"]


def test_truncated_safetensors_is_one_line(saved_models, tmp_path):
    from kdyn.models.loading import load_model

    folder = tmp_path / "model"
    shutil.copytree(saved_models["olmo"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(KdynError) as info:
        load_model({"name": "local", "family": "local", "path": str(folder)})
    assert "truncated or corrupted" in str(info.value) and str(folder) in str(info.value)
    assert "\n" not in str(info.value)
