"""Token store: byte layout, rows identical to in-memory packing, resume, DDP slices, concurrent and
interrupted builds, stale or corrupt stores, memory maps instead of copies."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from kdyn.data import corpora
from kdyn.data.datamodule import CorpusDataModule, TrainingStream
from kdyn.data.packing import pack_rows
from kdyn.data.sources import hub
from kdyn.data.store import build_store, store_name
from kdyn.errors import KdynError

SEQ = 32


def _text_corpus(path: Path) -> dict:
    return {"name": "text", "path": str(path), "text_field": "text", "shuffle": False, "max_documents": None}


def _all_rows(table) -> torch.Tensor:
    return table.rows(np.arange(len(table)))


@pytest.fixture
def text_corpus(corpus_jsonl) -> dict:
    return _text_corpus(corpus_jsonl)


# ----------------------------------------------------------------------------------- layout and round trips
def test_files_follow_the_published_byte_layout(text_corpus, tokenizer, tmp_path):
    store, built = build_store(text_corpus, tokenizer, tmp_path)
    assert built
    docs = list(corpora.iter_documents(text_corpus))
    expected = [tok for d in docs for tok in tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    # read back with plain numpy, per the README's layout (headerless little-endian uint16, vocabulary 512)
    tokens = np.fromfile(store.folder / "tokens.bin", dtype="<u2")
    assert tokens.tolist() == expected
    offsets = np.load(store.folder / "docs.npy")
    assert offsets.dtype == np.int64 and len(offsets) == len(docs) + 1 and offsets[0] == 0
    first = tokenizer(docs[0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokens[offsets[0]:offsets[1]].tolist() == first
    manifest = json.loads((store.folder / "manifest.json").read_text())
    assert manifest["num_tokens"] == len(expected) and manifest["num_documents"] == len(docs)
    assert manifest["dtype"] == "<u2" and manifest["max_token_id"] == max(expected)
    assert manifest["eos"]["eos_token_id"] == tokenizer.eos_token_id
    assert store.folder.name == store_name(text_corpus, tokenizer) and store.folder.parent == tmp_path


@pytest.mark.parametrize("max_rows", [None, 7])
def test_store_rows_equal_pack_rows_for_a_text_file(text_corpus, tokenizer, tmp_path, max_rows):
    store, _ = build_store(text_corpus, tokenizer, tmp_path)
    expected = pack_rows(corpora.load_documents(text_corpus), tokenizer, SEQ, max_rows)
    rows = store.rows(SEQ, max_rows)
    assert len(rows) == expected.shape[0]
    assert torch.equal(_all_rows(rows), expected)


def test_store_rows_equal_pack_rows_for_the_synthetic_world(tokenizer, tmp_path):
    corpus = {"name": "synthetic", "world": {"n_people": 40}, "max_documents": 200}
    store, _ = build_store(corpus, tokenizer, tmp_path)
    expected = pack_rows(corpora.load_documents(corpus), tokenizer, 48)
    assert torch.equal(_all_rows(store.rows(48)), expected)


def test_store_rows_equal_pack_rows_per_period(tokenizer, tmp_path):
    from kdyn.data.periods import segment_documents

    corpus = {"name": "temporalwiki", "source": "synthetic", "n_periods": 3, "world": {"n_people": 40}}
    store, _ = build_store(corpus, tokenizer, tmp_path)
    segments = store.segment_rows(SEQ)
    periods = segment_documents(corpus)
    assert [name for name, _ in segments] == [name for name, _ in periods]
    for (_, rows), (_, docs) in zip(segments, periods):
        assert torch.equal(_all_rows(rows), pack_rows(docs, tokenizer, SEQ))  # each period packed on its own


def test_datamodule_serves_the_same_rows_with_and_without_the_store(text_corpus, tokenizer, tmp_path):
    data = {"seq_len": SEQ, "batch_size": 4, "max_rows": None}
    stored = CorpusDataModule({**text_corpus, "shuffle": True}, {**data, "store": {"enabled": True, "dir": str(tmp_path)}},
                              tokenizer, seed=3)
    memory = CorpusDataModule({**text_corpus, "shuffle": True}, {**data, "store": {"enabled": False}}, tokenizer, seed=3)
    stored.prepare_rows()
    memory.prepare_rows()
    assert stored.store is not None and memory.store is None
    a = TrainingStream(stored.rows, 4, shuffle=True, seed=3, num_steps=400)
    b = TrainingStream(memory.rows, 4, shuffle=True, seed=3, num_steps=400)
    for k in (0, 1, 250, 399):  # 400 steps × 4 rows cross an epoch boundary (same permutations)
        assert torch.equal(a[k]["input_ids"], b[k]["input_ids"])


# ----------------------------------------------------------------------------------- reading
def test_rows_are_read_from_the_memory_map_not_copied(text_corpus, tokenizer, tmp_path):
    store, _ = build_store(text_corpus, tokenizer, tmp_path)
    rows = store.rows(SEQ)
    assert isinstance(rows.array, np.memmap)
    assert Path(rows.array.filename) == store.folder / "tokens.bin"
    assert np.shares_memory(rows.array, store.tokens)  # a view: no copy of the corpus exists
    batch = rows.rows(np.array([3, 0]))
    assert batch.dtype == torch.long and batch.shape == (2, SEQ)
    flat = np.fromfile(store.folder / "tokens.bin", dtype="<u2")
    assert batch[0].tolist() == flat[3 * SEQ:4 * SEQ].tolist()


def test_resume_at_step_n_reads_what_an_uninterrupted_run_reads(text_corpus, tokenizer, tmp_path):
    store, _ = build_store(text_corpus, tokenizer, tmp_path)
    rows = store.rows(SEQ)
    kwargs = dict(shuffle=True, seed=5, num_steps=60, accumulate=2)
    full = TrainingStream(rows, 3, **kwargs)
    resumed = TrainingStream(rows, 3, start_step=41, **kwargs)
    assert len(resumed) == (60 - 41) * 2
    for k in range(len(resumed)):
        a, b = full[41 * 2 + k], resumed[k]
        assert int(a["step"]) == int(b["step"]) and torch.equal(a["input_ids"], b["input_ids"])


def test_ddp_ranks_read_disjoint_slices_that_make_the_global_batch(text_corpus, tokenizer, tmp_path):
    store, _ = build_store(text_corpus, tokenizer, tmp_path)
    rows = store.rows(SEQ)
    single = TrainingStream(rows, 8, shuffle=True, seed=2, num_steps=5)
    ranks = [TrainingStream(rows, 4, world_size=2, rank=r, shuffle=True, seed=2, num_steps=5) for r in (0, 1)]
    seen = set()
    for step in range(5):
        parts = [stream[step]["input_ids"] for stream in ranks]
        assert torch.equal(torch.cat(parts), single[step]["input_ids"])
        # the rows' stream positions: rank r owns global rows [4r, 4r+4) of each step
        for r in (0, 1):
            positions = tuple(range(step * 8 + 4 * r, step * 8 + 4 * r + 4))
            assert not seen.intersection(positions)
            seen.update(positions)
    assert seen == set(range(40))


# ----------------------------------------------------------------------------------- building safely
def _build_in_child(corpus, tokenizer, root, barrier, queue):
    barrier.wait()
    store, built = build_store(corpus, tokenizer, root)
    queue.put((built, str(store.folder), np.asarray(store.tokens).tobytes()))


def test_two_processes_building_one_store_build_it_once(text_corpus, tokenizer, tmp_path):
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(text_corpus, tokenizer, tmp_path, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(built for built, _, _ in results) == [False, True]  # one built, the other opened it
    assert results[0][1:] == results[1][1:]
    folders = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert folders == [store_name(text_corpus, tokenizer)]  # no staging folder left behind


def test_an_interrupted_build_leaves_no_store(text_corpus, tokenizer, tmp_path, monkeypatch):
    import kdyn.data.store as store_module

    def failing_segments(corpus):
        def docs():
            yield from list(corpora.iter_documents(corpus))[:50]
            raise KeyboardInterrupt  # e.g. Ctrl-C half-way through
        return [("all", docs())]

    monkeypatch.setattr(store_module, "ENCODE_BATCH", 16)
    monkeypatch.setattr(store_module, "corpus_segments", failing_segments)
    with pytest.raises(KeyboardInterrupt):
        build_store(text_corpus, tokenizer, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]
    monkeypatch.undo()
    # a build killed outright (no cleanup) leaves a staging folder: the next build ignores and removes it
    name = store_name(text_corpus, tokenizer)
    stale = tmp_path / f"{name}.staging-999999"
    stale.mkdir()
    (stale / "tokens.bin").write_bytes(b"\x01\x02")
    store, built = build_store(text_corpus, tokenizer, tmp_path)
    assert built and not stale.exists()
    assert torch.equal(_all_rows(store.rows(SEQ)), pack_rows(corpora.load_documents(text_corpus), tokenizer, SEQ))


# ----------------------------------------------------------------------------------- stale or corrupt stores
def test_a_changed_corpus_file_is_rebuilt(tokenizer, tmp_path, corpus_jsonl):
    path = tmp_path / "docs.jsonl"
    lines = corpus_jsonl.read_text().splitlines()
    path.write_text("\n".join(lines[:100]) + "\n")
    corpus = _text_corpus(path)
    first, _ = build_store(corpus, tokenizer, tmp_path / "stores")
    path.write_text("\n".join(lines[100:250]) + "\n")
    second, built = build_store(corpus, tokenizer, tmp_path / "stores")
    assert built and second.folder == first.folder
    assert torch.equal(_all_rows(second.rows(SEQ)), pack_rows(corpora.load_documents(corpus), tokenizer, SEQ))


def test_a_store_built_with_another_tokenizer_is_refused_with_what_differs(text_corpus, tokenizer, tmp_path):
    store, _ = build_store(text_corpus, tokenizer, tmp_path)
    manifest_path = store.folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tokenizer"]["fingerprint"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(KdynError, match=r"its tokenizer .* differ.*delete the folder"):
        build_store(text_corpus, tokenizer, tmp_path)


def test_a_truncated_token_file_is_named_with_its_expected_size(text_corpus, tokenizer, tmp_path):
    store, _ = build_store(text_corpus, tokenizer, tmp_path)
    n_tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in corpora.iter_documents(text_corpus))
    bin_path = store.folder / "tokens.bin"
    with bin_path.open("r+b") as f:
        f.truncate(bin_path.stat().st_size - 10)
    with pytest.raises(KdynError, match=rf"{bin_path} is {2 * n_tokens - 10:,} bytes, expected {2 * n_tokens:,} bytes"):
        build_store(text_corpus, tokenizer, tmp_path)
    # the fix the message gives works: delete the folder and rerun
    import shutil

    shutil.rmtree(store.folder)
    _, built = build_store(text_corpus, tokenizer, tmp_path)
    assert built


def test_an_unwritable_store_folder_is_one_clear_error_and_the_fix_works(text_corpus, tokenizer, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data = {"seq_len": SEQ, "batch_size": 4, "store": {"enabled": True, "dir": str(blocker / "stores")}}
    with pytest.raises(KdynError, match=r"cannot write a token store under .*a-file/stores.*data.store.dir"):
        CorpusDataModule(text_corpus, data, tokenizer).prepare_rows()
    fixed = CorpusDataModule(text_corpus, {**data, "store": {"enabled": False, "dir": data["store"]["dir"]}}, tokenizer)
    fixed.prepare_rows()
    assert len(fixed.rows) > 4


def test_a_token_id_beyond_the_model_vocabulary_is_refused(text_corpus, tokenizer, tmp_path):
    data = {"seq_len": SEQ, "batch_size": 4, "store": {"enabled": True, "dir": str(tmp_path)}}
    CorpusDataModule(text_corpus, data, tokenizer, vocab_size=len(tokenizer)).prepare_rows()  # fits
    with pytest.raises(KdynError, match=r"token id \d+, but the model's vocabulary has 100 entries"):
        CorpusDataModule(text_corpus, data, tokenizer, vocab_size=100).prepare_rows()


# ----------------------------------------------------------------------------------- streamed corpora, no store
@pytest.fixture
def local_hub_corpus(corpus_jsonl, tmp_path) -> dict:
    import datasets

    texts = [json.loads(line)["text"] for line in corpus_jsonl.read_text().splitlines()]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "hub"))
    return {"name": "hub", "dataset": str(tmp_path / "hub"), "split": "train", "text_field": "text", "streaming": True,
            "max_documents": None}


@pytest.mark.parametrize("start", [1, 7])
def test_a_streamed_corpus_resumes_from_its_saved_position_without_rereading(local_hub_corpus, tokenizer, monkeypatch,
                                                                             start):
    import kdyn.data.datamodule as dm

    monkeypatch.setattr(dm, "ENCODE_CHUNK", 2)  # rows span several chunks
    kwargs = dict(world_size=2, rank=1, accumulate=2, num_steps=10)
    full = dm.StreamingTrainingStream(local_hub_corpus, tokenizer, SEQ, 3, **kwargs)
    batches, saved = [], None
    for batch in full:
        batches.append(batch)
        if int(batch["step"]) == start - 1 and saved is None:
            saved = full.resume_state(start)  # what a checkpoint saved after step `start` holds
    assert len(batches) == 10 * 2
    # the stream as in-memory packing would cut it: rows of rank 1, micro-batches of 2 ranks × 3 rows
    rows = pack_rows(corpora.load_documents(local_hub_corpus), tokenizer, SEQ)
    assert torch.equal(batches[5]["input_ids"], rows[5 * 6 + 3:5 * 6 + 6])

    read = []
    original = hub.hub_texts

    def counting(ds, corpus):
        for text in original(ds, corpus):
            read.append(text)
            yield text

    monkeypatch.setattr(hub, "hub_texts", counting)
    resumed = list(dm.StreamingTrainingStream(local_hub_corpus, tokenizer, SEQ, 3, start_step=start, resume=saved,
                                              **kwargs))
    assert len(resumed) == (10 - start) * 2
    for a, b in zip(batches[start * 2:], resumed):
        assert int(a["step"]) == int(b["step"]) and torch.equal(a["input_ids"], b["input_ids"])
    # the documents before the saved chunk were not read again (step 7 lies beyond the first chunk)
    skipped = saved["documents_before"]
    assert read[0] == corpora.load_documents(local_hub_corpus)[skipped]
    assert (skipped > 0) == (start == 7)


def test_kdyn_train_resumes_a_streamed_corpus_from_the_checkpointed_position(saved_models, local_hub_corpus, tmp_path,
                                                                            monkeypatch):
    from kdyn.train import train
    from tests.conftest import FAST_TRAINER, compose_cfg
    from tests.test_resume import SigtermAt

    args = ["model=local", f"model.path={saved_models['olmo']}", "corpus=hub", f"corpus.dataset={local_hub_corpus['dataset']}",
            "trainer.max_steps=5", "data.seq_len=32", "data.batch_size=4", "seed=1", *FAST_TRAINER]
    straight = train(compose_cfg("train", args, tmp_path / "straight"))
    run = tmp_path / "interrupted"
    with pytest.raises(SystemExit):
        train(compose_cfg("train", args, run), extra_callbacks=[SigtermAt(3)])
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    position = saved["CorpusDataModule"]["stream"]
    assert saved["global_step"] == 3 and position["micro_index"] == 3
    import kdyn.data.datamodule as dm

    streams = []
    monkeypatch.setattr(dm.StreamingTrainingStream, "_dataset",
                        lambda self, original=dm.StreamingTrainingStream._dataset: streams.append(self) or original(self))
    resumed = train(compose_cfg("train", args, run))
    assert resumed["steps_this_session"] == 2
    assert streams[0].resume == position  # the stream seeked to the saved position (not a re-read)
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-6)


def test_kdyn_prepare_builds_the_store_kdyn_train_then_opens(saved_models, corpus_jsonl, tmp_path, capsys):
    from kdyn.prepare import prepare
    from kdyn.train import train
    from tests.conftest import FAST_TRAINER, compose_cfg

    args = ["model=local", f"model.path={saved_models['olmo']}", "corpus=text", f"corpus.path={corpus_jsonl}",
            "trainer.max_steps=2", "data.seq_len=32", "data.batch_size=4", f"data.store.dir={tmp_path / 'stores'}",
            *FAST_TRAINER]
    first = prepare(compose_cfg("train", args, tmp_path / "p"), progress=False)
    assert first["built"] and "kdyn-prepare: built in" in capsys.readouterr().out
    expected = pack_rows(corpora.load_documents({"name": "text", "path": str(corpus_jsonl)}), saved_tokenizer(saved_models), 32)
    assert first["rows"] == expected.shape[0] and first["bytes"] > 2 * first["tokens"]
    again = prepare(compose_cfg("train", args, tmp_path / "p2"), progress=False)
    assert not again["built"] and again["folder"] == first["folder"]
    results = train(compose_cfg("train", args, tmp_path / "run"))
    assert results["corpus"]["rows"] == expected.shape[0] and results["steps"] == 2
    assert [p.name for p in (tmp_path / "stores").iterdir() if p.is_dir()] == [Path(first["folder"]).name]


def saved_tokenizer(saved_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(saved_models["olmo"])


def test_a_streamed_corpus_uses_a_store_when_bounded_or_prepared(local_hub_corpus, tokenizer, tmp_path):
    data = {"seq_len": SEQ, "batch_size": 4, "store": {"enabled": True, "dir": str(tmp_path / "stores")}}
    open_ended = CorpusDataModule(local_hub_corpus, data, tokenizer)
    assert open_ended.streaming  # nothing built yet: streamed
    bounded = CorpusDataModule({**local_hub_corpus, "max_documents": 100}, data, tokenizer)
    assert not bounded.streaming
    bounded.prepare_rows()
    first_100 = corpora.load_documents(local_hub_corpus)[:100]
    assert torch.equal(_all_rows(bounded.rows), pack_rows(first_100, tokenizer, SEQ))
    build_store(local_hub_corpus, tokenizer, tmp_path / "stores")  # what kdyn-prepare does
    prepared = CorpusDataModule(local_hub_corpus, data, tokenizer)
    assert not prepared.streaming
    prepared.prepare_rows()
    assert torch.equal(_all_rows(prepared.rows), pack_rows(corpora.load_documents(local_hub_corpus), tokenizer, SEQ))


def test_calling_the_tokenizer_with_truncation_keeps_its_store(tokenizer):
    """Truncation/padding are call-time settings the fast tokenizer records in its backend when used
    (e.g. by probe scoring): they change no ids, so they must not change the store key."""
    from copy import deepcopy

    from kdyn.data.store import tokenizer_fingerprint

    fresh = deepcopy(tokenizer)
    before = tokenizer_fingerprint(fresh)
    fresh(["a fairly long document " * 20], truncation=True, max_length=8, padding="max_length")
    assert fresh.backend_tokenizer.truncation is not None  # the call did change the backend's state
    clone = deepcopy(fresh)  # a new object: its fingerprint is computed, not cached
    assert tokenizer_fingerprint(clone) == before
