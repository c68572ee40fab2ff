"""Corpora, packing and the step-indexed training stream."""

from __future__ import annotations

import json

import pytest
import torch

from kdyn.data import corpora
from kdyn.data.datamodule import TrainingStream
from kdyn.data.packing import pack_rows
from kdyn.errors import KdynError
from tests.conftest import shared_data


# ----------------------------------------------------------------------------------- corpora
def test_jsonl_documents_in_file_order(tmp_path):
    path = tmp_path / "c.jsonl"
    texts = [f"document number {i}" for i in range(5)]
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)) + "\n\n")
    assert corpora.load_documents({"name": "text", "path": str(path)}) == texts
    assert corpora.load_documents({"name": "text", "path": str(path), "max_documents": 2}) == texts[:2]


@pytest.mark.parametrize("line, message", [
    ('{"body": "x"}', "no 'text' field"),
    ("not json", "not valid JSON"),
    ('{"text": 3}', "is a int, expected a string"),
    ('["a"]', "no 'text' field"),
])
def test_malformed_jsonl_names_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(KdynError) as err:
        corpora.load_documents({"name": "text", "path": str(path)})
    assert f"{path}:2" in str(err.value) and message in str(err.value)


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(KdynError, match="corpus.path is not set"):
        corpora.load_documents({"name": "text", "path": None})
    with pytest.raises(KdynError, match="does not exist"):
        corpora.load_documents({"name": "text", "path": str(tmp_path / "nope.txt")})
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(KdynError, match="no documents"):
        corpora.load_documents({"name": "text", "path": str(empty)})


def test_txt_splits(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b\nc d\n\ne f\n")
    assert corpora.load_documents({"name": "text", "path": str(path)}) == ["a b\nc d", "e f"]
    assert corpora.load_documents({"name": "text", "path": str(path), "txt_split": "line"}) == ["a b", "c d", "e f"]
    assert len(corpora.load_documents({"name": "text", "path": str(path), "txt_split": "file"})) == 1


def test_wikitext_local_folder_groups_articles():
    folder = shared_data("wikitext-2")
    docs = corpora.load_documents({"name": "wikitext", "path": str(folder), "split": "validation"})
    headings = [line for line in (folder / "valid.txt").read_text().splitlines()
                if line.strip().startswith("= ") and not line.strip().startswith("= =")]
    assert len(docs) == len(headings)
    assert docs[0].splitlines()[0] == headings[0].strip().strip("= ").strip()


def test_unknown_corpus_is_rejected():
    with pytest.raises(KdynError, match="unknown corpus"):
        list(corpora.iter_documents({"name": "dolma-but-misspelled"}))


# ----------------------------------------------------------------------------------- packing
def test_packed_rows_are_the_eos_joined_token_stream(tokenizer):
    docs = ["the first document is here", "a second one", "and a third document with more words in it"] * 5
    rows = pack_rows(docs, tokenizer, seq_len=8)
    stream = []
    for d in docs:
        stream += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert rows.shape == (len(stream) // 8, 8)
    assert rows.flatten().tolist() == stream[: rows.numel()]


def test_corpus_shorter_than_one_row_is_an_error(tokenizer):
    with pytest.raises(KdynError, match="fewer than seq_len"):
        pack_rows(["tiny"], tokenizer, seq_len=512)


# ----------------------------------------------------------------------------------- stream
def _rows(n=10, t=4):
    return torch.arange(n * t).reshape(n, t)


def _collect(stream):
    return [stream[k]["input_ids"] for k in range(len(stream))]


def test_stream_serves_rows_in_order_and_wraps_epochs():
    rows = _rows()
    stream = TrainingStream(rows, batch_size=4, num_steps=5)
    served = torch.cat(_collect(stream))
    expected = torch.cat([rows, rows])  # 5 steps x 4 rows = 20 rows = two passes
    assert torch.equal(served, expected)


def test_shuffled_epochs_are_permutations_and_seeded():
    rows = _rows()
    a = torch.cat(_collect(TrainingStream(rows, batch_size=5, num_steps=4, shuffle=True, seed=3)))
    b = torch.cat(_collect(TrainingStream(rows, batch_size=5, num_steps=4, shuffle=True, seed=3)))
    c = torch.cat(_collect(TrainingStream(rows, batch_size=5, num_steps=4, shuffle=True, seed=4)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for epoch in (a[:10], a[10:]):
        assert sorted(epoch[:, 0].tolist()) == rows[:, 0].tolist()


def test_ranks_and_accumulation_partition_the_global_batch():
    rows = _rows(40)
    single = TrainingStream(rows, batch_size=8, num_steps=3)
    for world, accumulate in [(2, 1), (1, 2), (2, 2)]:
        local = 8 // (world * accumulate)
        per_step = {}
        for rank in range(world):
            stream = TrainingStream(rows, batch_size=local, world_size=world, rank=rank, accumulate=accumulate, num_steps=3)
            for k in range(len(stream)):
                batch = stream[k]
                per_step.setdefault(int(batch["step"]), []).append(batch["input_ids"])
        for step in range(3):
            got = sorted(r[0].item() for r in torch.cat(per_step[step]))
            want = sorted(r[0].item() for r in single[step]["input_ids"])
            assert got == want, (world, accumulate, step)


def test_resumed_stream_continues_exactly():
    rows = _rows(13)
    full = _collect(TrainingStream(rows, batch_size=3, num_steps=9, shuffle=True, seed=1))
    resumed = _collect(TrainingStream(rows, batch_size=3, num_steps=9, shuffle=True, seed=1, start_step=4))
    assert all(torch.equal(x, y) for x, y in zip(full[4:], resumed, strict=True))


def test_transforms_see_step_and_global_rows():
    seen = []

    def mark(batch, step, global_rows):
        seen.append((step, global_rows.tolist()))
        return batch

    stream = TrainingStream(_rows(), batch_size=2, world_size=2, rank=1, num_steps=2, transforms=[mark])
    _collect(stream)
    assert seen == [(0, [2, 3]), (1, [2, 3])]


def test_hub_corpus_from_a_local_datasets_folder_streams_into_training(tmp_path, saved_models, compose_train):
    """corpus=hub reads any `datasets` dataset (here a local save_to_disk folder, offline) through the
    streaming training stream."""
    import datasets

    from kdyn.train import train
    from tests.conftest import FAST_TRAINER

    texts = [f"Record {i} says that the river number {i % 9} flows north past {i * 3} mills." for i in range(200)]
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "ds"))
    docs = corpora.load_documents({"name": "hub", "dataset": str(tmp_path / "ds"), "split": "train",
                                   "text_field": "body"})
    assert docs == texts
    with pytest.raises(KdynError, match="no 'text' field"):
        corpora.load_documents({"name": "hub", "dataset": str(tmp_path / "ds"), "split": "train"})
    cfg = compose_train("model=local", f"model.path={saved_models['gpt_neox']}", "corpus=hub",
                        f"corpus.dataset={tmp_path / 'ds'}", "corpus.text_field=body", "trainer.max_steps=2",
                        "data.seq_len=32", "data.batch_size=4", *FAST_TRAINER)
    results = train(cfg)
    assert results["steps"] == 2 and results["tokens_seen"] == 2 * 4 * 32


def test_fictional_knowledge_corpus_yields_the_dataset_texts_in_record_order(compose_train):
    folder = shared_data("fictional_knowledge")
    records = json.loads((folder / "fictional_knowledge_paraphrased.json").read_text())
    node = dict(compose_train("corpus=fictional_knowledge", f"corpus.path={folder}").corpus)
    assert node["name"] == "fictional_knowledge" and node["items"] == [0, 120]
    assert corpora.load_documents(node) == [r["train_context"] for r in records[:120]]
    both = corpora.load_documents({**node, "items": [120, 130], "texts": "both"})
    assert both == [t for r in records[120:130] for t in [r["train_context"], *r["paraphrases"]]]
    assert corpora.load_documents({**node, "items": [3, 5], "texts": "paraphrases"}) == \
        records[3]["paraphrases"] + records[4]["paraphrases"]


def test_fictional_knowledge_corpus_bad_input(tmp_path):
    folder = shared_data("fictional_knowledge")
    with pytest.raises(KdynError, match="unknown corpus.texts 'paragraph'"):
        corpora.load_documents({"name": "fictional_knowledge", "path": str(folder), "texts": "paragraph"})
    with pytest.raises(KdynError, match=r"corpus.items=\[0, 500\] is out of range"):
        corpora.load_documents({"name": "fictional_knowledge", "path": str(folder), "items": [0, 500]})
    plain = tmp_path / "fk.json"  # the dataset without paraphrases
    plain.write_text(json.dumps([{k: v for k, v in r.items() if k != "paraphrases"}
                                 for r in json.loads((folder / "fictional_knowledge.json").read_text())[:3]]))
    with pytest.raises(KdynError, match="no paraphrases"):
        corpora.load_documents({"name": "fictional_knowledge", "path": str(plain), "texts": "paraphrases",
                                "items": [0, 3]})
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"train_context": "x"}]))
    with pytest.raises(KdynError, match="broken.json"):
        corpora.load_documents({"name": "fictional_knowledge", "path": str(broken)})
