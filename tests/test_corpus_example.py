"""The README's "Adding a corpus" worked example, run as written (one module + one YAML file): the
corpus is composed from its YAML, read through the facade, and trained on for one step."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import FAST_TRAINER
from tests.test_architecture_examples import _compose, architecture_files, examples  # noqa: F401  (fixture)

SEQ = 32


def test_the_readme_shows_the_corpus_example():
    files = architecture_files()
    assert {"my_corpora.py", "conf/corpus/csv_column.yaml"} <= set(files)
    assert "_target_: my_corpora.CsvColumnCorpus" in files["conf/corpus/csv_column.yaml"]


@pytest.fixture
def notes_csv(tmp_path, corpus_jsonl) -> Path:
    """A CSV whose `text` column holds real paragraphs (two rows with an empty cell, one extra column)."""
    import json

    texts = [json.loads(line)["text"] for line in corpus_jsonl.read_text().splitlines()][:40]
    path = tmp_path / "notes.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i, text in enumerate(texts):
            writer.writerow([i, text])
            if i in (3, 17):
                writer.writerow([f"{i}b", ""])
    return path


def test_new_corpus_is_read_through_the_facade_and_trains_one_step(examples, tmp_path, notes_csv, saved_models,  # noqa: F811
                                                                    tokenizer):
    from kdyn.config import to_plain
    from kdyn.data.corpora import describe, load_documents
    from kdyn.errors import KdynError
    from kdyn.train import train

    root, _ = examples
    with notes_csv.open(newline="", encoding="utf-8") as f:
        expected = [row["text"] for row in csv.DictReader(f) if row["text"].strip()]
    assert len(expected) == 40
    overrides = ["corpus=csv_column", f"corpus.path={notes_csv}", "model=local", f"model.path={saved_models['llama']}",
                 f"data.seq_len={SEQ}", "data.batch_size=2", "trainer.max_steps=1", *FAST_TRAINER]
    cfg = _compose(root, tmp_path / "run", *overrides)
    node = to_plain(cfg.corpus)
    assert node["_target_"] == "my_corpora.CsvColumnCorpus" and node["name"] == "csv_column"
    assert load_documents(node) == expected
    assert load_documents({**node, "max_documents": 5}) == expected[:5]
    assert describe(node) == f"csv_column ({notes_csv})"

    results = train(cfg)
    assert results["status"] == "completed" and results["corpus"]["name"] == "csv_column"
    # the packed rows are the CSV's documents, each followed by EOS, cut into rows of SEQ tokens
    n_tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in expected)
    assert results["corpus"]["rows"] == n_tokens // SEQ

    with pytest.raises(KdynError, match=r"corpus._target_=my_corpora.Nope cannot be imported"):
        load_documents({**node, "_target_": "my_corpora.Nope"})
    with pytest.raises(KdynError, match=r"unknown corpus 'csv_colum'; choose one of .*text"):
        load_documents({"name": "csv_colum"})
