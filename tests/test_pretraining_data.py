"""corpus=pretraining: Megatron/GPT-NeoX indexed datasets and OLMo-style token files read in place.

Every file here is written by the test itself with the published byte layouts (struct + numpy, not
kdyn's reader), and the expected rows are computed from the arrays the test wrote.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdyn.data.pretraining import open_pretraining_rows
from kdyn.errors import KdynError

SEQ = 8  # data.seq_len of the unit tests


# ----------------------------------------------------------------------------------- writers (the published layouts)
def write_megatron(prefix: Path, sequences: list[np.ndarray], dtype=np.uint16, code: int = 8, version: int = 1,
                   magic: bytes = b"MMIDIDX\x00\x00") -> Path:
    """PREFIX.bin + PREFIX.idx as GPT-NeoX's MMapIndexedDataset.Index.writer writes them (documents = sequences)."""
    itemsize = np.dtype(dtype).itemsize
    sizes = np.array([len(s) for s in sequences], dtype=np.int32)
    pointers = np.zeros(len(sequences), dtype=np.int64)
    pointers[1:] = np.cumsum(sizes[:-1].astype(np.int64)) * itemsize
    doc_idx = np.arange(len(sequences) + 1, dtype=np.int64)
    with open(f"{prefix}.bin", "wb") as f:
        for s in sequences:
            f.write(np.asarray(s, dtype=dtype).tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(magic)
        f.write(struct.pack("<Q", version))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(sizes.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(doc_idx.tobytes(order="C"))
    return prefix


def pythia_like(tmp_path: Path, n: int = 40, length: int = SEQ + 1, vocab: int = 500, seed: int = 0):
    """A pre-shuffled-Pile-shaped dataset: n sequences, each one `length`-token training instance."""
    rng = np.random.default_rng(seed)
    instances = rng.integers(0, vocab, size=(n, length), dtype=np.uint16)
    return write_megatron(tmp_path / "document", list(instances)), instances


def corpus(path, **kw) -> dict:
    return {"name": "pretraining", "format": "megatron", "path": path if isinstance(path, list) else str(path), "dtype": "uint16", "sequence_length": None,
            "global_indices": None, "start_step": 0, "global_batch_size": None, "vocab_size": None, "shuffle": False,
            **kw}


def data(seq_len: int = SEQ, batch_size: int = 2) -> dict:
    return {"seq_len": seq_len, "batch_size": batch_size}


def all_rows(table) -> torch.Tensor:
    return table.rows(np.arange(len(table)))


# ----------------------------------------------------------------------------------- Megatron / GPT-NeoX
def test_megatron_2049_style_instances_from_start_step(tmp_path):
    prefix, instances = pythia_like(tmp_path)
    table = open_pretraining_rows(corpus(prefix, start_step=3, global_batch_size=4), data())
    assert table.seq_len == SEQ + 1 and table.label_token  # rows carry inputs + one label, as GPT-NeoX trains
    assert len(table) == 40 - 12
    # Pythia's batch of step S is sequences [S*B, (S+1)*B): the checkpoint of step 3 trains next on 12..15
    assert torch.equal(table.rows(np.arange(4)), torch.from_numpy(instances[12:16].astype(np.int64)))
    assert torch.equal(all_rows(table), torch.from_numpy(instances[12:].astype(np.int64)))
    capped = open_pretraining_rows(corpus(prefix, start_step=3, global_batch_size=4), {**data(), "max_rows": 5})
    assert torch.equal(all_rows(capped), torch.from_numpy(instances[12:17].astype(np.int64)))  # data.max_rows
    # PREFIX.bin / PREFIX.idx name the same dataset
    again = open_pretraining_rows(corpus(f"{prefix}.idx", start_step=3, global_batch_size=4), data())
    assert torch.equal(all_rows(again), all_rows(table))


def test_megatron_documents_are_read_as_one_stream_cut_into_instances(tmp_path):
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 30000, size=int(n), dtype=np.int32) for n in rng.integers(1, 20, size=25)]
    write_megatron(tmp_path / "docs", docs, dtype=np.int32, code=4)
    stream = np.concatenate(docs).astype(np.int64)
    table = open_pretraining_rows(corpus(tmp_path / "docs", sequence_length=SEQ), data())
    n = len(stream) // SEQ
    assert not table.label_token and len(table) == n
    assert torch.equal(all_rows(table), torch.from_numpy(stream[: n * SEQ].reshape(n, SEQ)))


# ----------------------------------------------------------------------------------- OLMo-style numpy files
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_numpy_token_files_in_global_indices_order(tmp_path, dtype):
    rng = np.random.default_rng(2)
    high = 60000 if dtype == "uint16" else 3_000_000
    files = [rng.integers(0, high, size=n, dtype=dtype) for n in (5 * SEQ + 3, 7 * SEQ, 2 * SEQ + 7)]
    for i, tokens in enumerate(files):
        tokens.tofile(tmp_path / f"part-{i}.npy")  # headerless, as OLMo's memmaps
    # OLMo's instances: each file cut separately into SEQ-token chunks, its remainder dropped, files in order
    instances = np.concatenate([t[: len(t) // SEQ * SEQ].reshape(-1, SEQ) for t in files]).astype(np.int64)
    order = rng.permutation(len(instances)).astype(np.uint32)
    order.tofile(tmp_path / "global_indices.npy")  # OLMo writes it with np.memmap(dtype=uint32)
    paths = [str(tmp_path / f"part-{i}.npy") for i in range(3)]
    table = open_pretraining_rows(corpus(paths, format="numpy", dtype=dtype,
                                         global_indices=str(tmp_path / "global_indices.npy"),
                                         start_step=2, global_batch_size=3), data())
    assert table.seq_len == SEQ and not table.label_token
    assert torch.equal(all_rows(table), torch.from_numpy(instances[order[6:].astype(np.int64)]))
    # a folder reads its *.npy token files in name order (the order file is not a token file)
    folder = open_pretraining_rows(corpus(tmp_path, format="numpy", dtype=dtype), data())
    assert torch.equal(all_rows(folder), torch.from_numpy(instances))
    # an order file saved with np.save (a .npy header) reads the same
    np.save(tmp_path / "order_with_header.npy", order)
    saved = open_pretraining_rows(corpus(paths, format="numpy", dtype=dtype, start_step=2, global_batch_size=3,
                                         global_indices=str(tmp_path / "order_with_header.npy")), data())
    assert torch.equal(all_rows(saved), all_rows(table))
    # spawned DataLoader workers get the table pickled as paths (not copies of the memory maps)
    all_rows(table)  # the memory maps are open now
    copy = pickle.loads(pickle.dumps(table))
    assert copy.instances._arrays is None  # reopened lazily from the paths
    assert isinstance(copy.order, np.memmap) and Path(copy.order.filename) == tmp_path / "global_indices.npy"
    assert torch.equal(all_rows(copy), all_rows(table))


# ----------------------------------------------------------------------------------- the training stream
def _stream(table, *, start_step=0, world_size=1, rank=0, batch_size=2, accumulate=1, transforms=None):
    from kdyn.data.datamodule import TrainingStream

    return TrainingStream(table, batch_size, world_size=world_size, rank=rank, accumulate=accumulate,
                          start_step=start_step, num_steps=6, transforms=transforms)


def test_resume_and_later_start_step_read_the_same_rows(tmp_path):
    prefix, instances = pythia_like(tmp_path, n=48)
    table = open_pretraining_rows(corpus(prefix, start_step=1, global_batch_size=4), data())
    full = [_stream(table, batch_size=4)[k]["input_ids"] for k in range(6)]
    resumed = _stream(table, batch_size=4, start_step=3)
    assert [int(resumed[k]["step"]) for k in range(3)] == [3, 4, 5]
    for k in range(3):
        assert torch.equal(resumed[k]["input_ids"], full[3 + k])
    # with kdyn's global batch equal to the original's, kdyn step s is original step start_step + s
    for s in range(6):
        assert torch.equal(full[s], torch.from_numpy(instances[(1 + s) * 4:(2 + s) * 4].astype(np.int64)))
    later = open_pretraining_rows(corpus(prefix, start_step=4, global_batch_size=4), data())
    assert torch.equal(_stream(later, batch_size=4)[0]["input_ids"], full[3])


def test_ddp_ranks_read_disjoint_rows_that_make_the_global_batch(tmp_path):
    prefix, instances = pythia_like(tmp_path, n=64)
    table = open_pretraining_rows(corpus(prefix, start_step=2, global_batch_size=8), data())
    # 2 ranks × 2 rows × 2 accumulation micro-batches = the original 8 instances per step
    for step in range(3):
        seen = []
        for rank in range(2):
            stream = _stream(table, world_size=2, rank=rank, accumulate=2)
            seen += [stream[step * 2 + micro]["input_ids"] for micro in range(2)]
        got = {tuple(r.tolist()) for batch in seen for r in batch}
        expected = {tuple(r) for r in instances[(2 + step) * 8:(3 + step) * 8].astype(np.int64).tolist()}
        assert sum(len(b) for b in seen) == 8 and got == expected


def test_label_token_rows_compose_with_injection_and_train_on_row_shifted(tmp_path):
    from kdyn.data.injection import InjectedText, InjectionEvent, InjectionPlan
    from kdyn.data.pretraining import split_label_token
    from kdyn.module import causal_lm_loss

    prefix, instances = pythia_like(tmp_path)
    table = open_pretraining_rows(corpus(prefix), data())
    knowledge = (401, 402, 403)
    for mode in ("replace", "prepend"):
        plan = InjectionPlan(events=[InjectionEvent(step=0, event=0, rows=[[InjectedText(0, "once", "o", knowledge,
                                                                                        False)]])],
                             mode=mode, seq_len=SEQ, first_row=1)
        ids = _stream(table, transforms=[plan])[0]["input_ids"]
        assert ids.shape == (2, SEQ + 1)
        assert torch.equal(ids[0], torch.from_numpy(instances[0].astype(np.int64)))  # row 0 untouched
        base = instances[1].astype(np.int64)
        expected = (np.concatenate([knowledge, base[3:]]) if mode == "replace"
                    else np.concatenate([knowledge, base[: SEQ + 1 - 3]]))
        assert ids[1].tolist() == expected.tolist()
        batch = _stream(table, transforms=[plan, split_label_token])[0]  # kdyn-train appends the split last
        inputs, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert inputs.shape == (2, SEQ) and mask.shape == (2, SEQ) and torch.equal(labels, ids)
        logits = torch.randn(2, SEQ, 500)
        loss, n = causal_lm_loss(logits, inputs, mask, labels)
        # GPT-NeoX: tokens = row[:-1], labels = row[1:]; every one of the SEQ positions has a target
        manual = torch.nn.functional.cross_entropy(logits.reshape(-1, 500), ids[:, 1:].reshape(-1))
        assert int(n) == 2 * SEQ and loss.item() == pytest.approx(manual.item(), rel=1e-6)


# ----------------------------------------------------------------------------------- faults: one clear line each
def test_faults_name_the_file_and_what_was_expected(tmp_path):
    prefix, _ = pythia_like(tmp_path)
    bin_path, idx_path = Path(f"{prefix}.bin"), Path(f"{prefix}.idx")
    good_bin, good_idx = bin_path.read_bytes(), idx_path.read_bytes()

    def fails(pattern, c=None, d=None):
        with pytest.raises(KdynError, match=pattern) as e:
            open_pretraining_rows(c or corpus(prefix), d or data())
        assert "\n" not in str(e.value)

    bin_path.write_bytes(good_bin[:-10])  # truncated .bin: the expected size comes from the index
    fails(rf"document\.bin is {len(good_bin) - 10} bytes, expected {len(good_bin)} \(360 uint16 tokens")
    bin_path.write_bytes(good_bin)
    idx_path.write_bytes(good_idx[:-8])
    fails(rf"document\.idx is {len(good_idx) - 8} bytes, expected {len(good_idx)} for its 40 sequences")
    idx_path.write_bytes(b"NOTANIDX\x00" + good_idx[9:])
    fails(r"not a Megatron/GPT-NeoX index: it starts with b'NOTANIDX")
    idx_path.write_bytes(good_idx[:9] + struct.pack("<Q", 2) + good_idx[17:])
    fails(r"index version 2, only version 1")
    idx_path.write_bytes(good_idx[:17] + struct.pack("<B", 6) + good_idx[18:])
    fails(r"dtype code 6 is not an integer token type")
    idx_path.write_bytes(good_idx)
    fails(r"does not exist", corpus(tmp_path / "missing"))
    fails(r"start_step=11 is beyond the data: .* holds 40 instances, 10 steps of corpus.global_batch_size=4 "
          r"\(start_step 0..9\)", corpus(prefix, start_step=11, global_batch_size=4))
    fails(r"needs corpus.global_batch_size", corpus(prefix, start_step=1))
    fails(r"document\.bin holds 9-token instances \(corpus.sequence_length\), but data.seq_len=4 needs 4 .* or 5 .*"
          r"set data.seq_len=8", d=data(seq_len=4))
    fails(r"corpus.shuffle=false", corpus(prefix, shuffle=True))
    fails(r"unknown corpus.format 'arrow'", corpus(prefix, format="arrow"))

    # numpy token files and order files
    tokens = np.arange(10 * SEQ, dtype=np.uint16)
    (tmp_path / "odd.npy").write_bytes(tokens.tobytes()[:-1])
    fails(r"odd\.npy is 159 bytes, not a multiple of 2 \(uint16\)", corpus(tmp_path / "odd.npy", format="numpy"))
    np.save(tmp_path / "headed.npy", tokens)
    raw = (tmp_path / "headed.npy").read_bytes()
    (tmp_path / "headed.npy").write_bytes(raw[:-6])
    fails(rf"headed\.npy is {len(raw) - 6} bytes, expected {len(raw)} \(80 × uint16",
          corpus(tmp_path / "headed.npy", format="numpy"))
    tokens.tofile(tmp_path / "ok.npy")
    np.array([0, 3, 10, 1], dtype=np.uint32).tofile(tmp_path / "order.npy")
    fails(r"order file .*order\.npy: entry 2 is instance 10, but .* holds 10 instances of 8 tokens",
          corpus(tmp_path / "ok.npy", format="numpy", global_indices=str(tmp_path / "order.npy")))
    np.save(tmp_path / "float_order.npy", np.arange(4, dtype=np.float32))
    fails(r"float_order\.npy holds float32 values; expected integer instance indices",
          corpus(tmp_path / "ok.npy", format="numpy", global_indices=str(tmp_path / "float_order.npy")))


def test_token_ids_outside_the_vocabulary_fail_with_the_file_and_position(tmp_path):
    instances = np.zeros((12, SEQ + 1), dtype=np.uint16)
    instances[9, 4] = 700
    prefix = write_megatron(tmp_path / "document", list(instances))
    table = open_pretraining_rows(corpus(prefix), data())
    table.check_vocabulary(512, rows=4)  # the first rows are fine
    assert table.rows(np.arange(8)).shape == (8, SEQ + 1)
    with pytest.raises(KdynError, match=r"document\.bin: token id 700 in instance 9 \(token offset 81\) is outside "
                                        r"the model's vocabulary of 512"):
        table.rows(np.arange(8, 12))  # checked in every served batch
    with pytest.raises(KdynError, match=r"token id 700 in instance 9"):
        open_pretraining_rows(corpus(prefix), data(), vocab_size=512).check_vocabulary(512)


def test_the_datamodule_checks_token_ids_of_pretraining_files_before_training(tmp_path):
    """The one vocabulary check of the data module also covers files read in place: an id in the first rows
    fails at prepare_rows (before any run folder holds anything), later ones when their batch is served."""
    from kdyn.data.datamodule import CorpusDataModule

    instances = np.zeros((12, SEQ + 1), dtype=np.uint16)
    instances[1, 3] = 700
    prefix = write_megatron(tmp_path / "document", list(instances))
    node = {**corpus(prefix), "_target_": "kdyn.data.sources.pretraining.PretrainingCorpus", "name": "pretraining"}
    with pytest.raises(KdynError, match=r"token id 700 in instance 1 .* vocabulary of 512"):
        CorpusDataModule(node, data(), tokenizer=None, vocab_size=512).prepare_rows()
    CorpusDataModule(node, data(), tokenizer=None, vocab_size=701).prepare_rows()  # a model that has the id


# ----------------------------------------------------------------------------------- kdyn-train end to end
def test_kdyn_train_continues_from_start_step_on_its_own_data(tmp_path, saved_models, compose_train, tokenizer):
    from lightning.pytorch.callbacks import Callback

    from kdyn.train import train
    from tests.conftest import FAST_TRAINER

    rng = np.random.default_rng(5)
    seq_len, per_step = 16, 4
    instances = rng.integers(0, len(tokenizer), size=(40, seq_len + 1), dtype=np.uint16)
    (tmp_path / "pile").mkdir()
    prefix = write_megatron(tmp_path / "pile" / "document", list(instances))

    class Batches(Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            # callbacks see the model's view: seq_len inputs (and mask), labels of the whole row
            assert batch["input_ids"].shape == batch["attention_mask"].shape == (per_step, seq_len)
            assert torch.equal(batch["labels"][:, :-1], batch["input_ids"])
            self.seen.append(batch["labels"].clone())

    batches = Batches()
    args = ["model=local", f"model.path={saved_models['gpt_neox']}", "corpus=pretraining", f"corpus.path={prefix}",
            "corpus.start_step=3", f"corpus.global_batch_size={per_step}", f"data.seq_len={seq_len}",
            f"data.batch_size={per_step}", "trainer.max_steps=2", *FAST_TRAINER]
    results = train(compose_train(*args), extra_callbacks=[batches])
    assert results["status"] == "completed" and results["steps"] == 2
    assert results["tokens_seen"] == 2 * per_step * seq_len  # the label token is never an input
    assert np.isfinite(results["final_loss"])
    for s, batch in enumerate(batches.seen):  # kdyn step s trained on the original batch of step 3 + s
        assert torch.equal(batch, torch.from_numpy(instances[(3 + s) * per_step:(4 + s) * per_step].astype(np.int64)))

    too_large = instances.copy()
    too_large[0, 0] = len(tokenizer) + 100
    bad = write_megatron(tmp_path / "pile" / "bad", list(too_large))
    cfg = compose_train(*[a.replace(str(prefix), str(bad)).replace("start_step=3", "start_step=0") for a in args])
    with pytest.raises(KdynError, match=rf"token id {len(tokenizer) + 100} in instance 0"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "results.json").exists()


# ----------------------------------------------------------------------------------- per-period files (TemporalWiki)
def test_temporalwiki_periods_train_on_local_files(tmp_path):
    from kdyn.data.periods import segment_documents

    texts = {"a": [f"Diff one, paragraph {i}." for i in range(3)], "b": [f"Diff two, article {i}." for i in range(4)]}
    (tmp_path / "p1.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts["a"]))
    (tmp_path / "p2.txt").write_text("\n\n".join(texts["b"]) + "\n")
    node = {"name": "temporalwiki", "source": "synthetic", "n_periods": 3, "world": {}, "seed": 0,
            "replay_unchanged": 0.0, "replay_base": 0.0, "text": None, "max_changed": None, "max_unchanged": 1000}
    default = segment_documents(node)
    names = [name for name, _ in default]
    with_files = segment_documents({**node, "periods": {names[0]: {"path": str(tmp_path / "p1.jsonl")},
                                                        names[2]: {"path": str(tmp_path / "p2.txt")}}})
    assert [name for name, _ in with_files] == names
    # the files' documents (shuffled within the period with its seed, as the stand-in text is)
    assert sorted(with_files[0][1]) == sorted(texts["a"]) and sorted(with_files[2][1]) == sorted(texts["b"])
    assert with_files[1][1] == default[1][1]  # a period without a file keeps the stand-in text
    with pytest.raises(KdynError, match=r"corpus.periods.nope.*unknown period; periods: "):
        segment_documents({**node, "periods": {"nope": {"path": str(tmp_path / "p1.jsonl")}}})
    with pytest.raises(KdynError, match=r"corpus.periods.*\.path=.*missing\.jsonl does not exist"):
        segment_documents({**node, "periods": {names[0]: {"path": str(tmp_path / "missing.jsonl")}}})


def test_twiki_period_files_through_the_composed_config(tmp_path, compose_train):
    """The README's override (a mapping: TWiki names start with a digit) reaches the real TWiki-Probes periods."""
    from kdyn.config import to_plain
    from kdyn.data.periods import load_periods, segment_documents
    from tests.conftest import shared_data

    twiki = shared_data("temporalwiki")
    texts = [f"In September the article {i} changed." for i in range(5)]
    (tmp_path / "diff.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    cfg = compose_train("corpus=temporalwiki", "corpus.source=twiki", f"corpus.path={twiki}", "corpus.max_changed=20",
                        "corpus.max_unchanged=20",
                        f"corpus.periods={{0801-0901: {{path: '{tmp_path / 'diff.jsonl'}', text_field: content}}}}")
    node = to_plain(cfg.corpus)
    names = [p.name for p in load_periods(node)]
    segments = dict(segment_documents(node))
    assert list(segments) == names and "0801-0901" in names and len(names) > 1
    assert sorted(segments["0801-0901"]) == sorted(texts)
    assert all(set(docs).isdisjoint(texts) for name, docs in segments.items() if name != "0801-0901")


def test_kdyn_train_injects_into_2049_style_rows(tmp_path, saved_models, compose_train, tokenizer):
    """Injection writes into the whole rows first; the split into inputs + labels comes after it."""
    from lightning.pytorch.callbacks import Callback

    from kdyn.train import train

    rng = np.random.default_rng(6)
    instances = rng.integers(0, len(tokenizer), size=(16, 33), dtype=np.uint16)
    prefix = write_megatron(tmp_path / "document", list(instances))
    seen = []

    class Batches(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append({k: batch[k].clone() for k in ("input_ids", "labels")})

    cfg = compose_train("model=local", f"model.path={saved_models['gpt_neox']}", "corpus=pretraining",
                        f"corpus.path={prefix}", "data.seq_len=32", "data.batch_size=2", "trainer.max_steps=1",
                        "inject.source.num_items=1", "inject.scenarios={paraphrase: 1, duplicate: 0, once: 0}",
                        "inject.num_events=1", "inject.first_row=1", "inject.mode=prepend", "callbacks=none",
                        "trainer.enable_progress_bar=false", "logger=csv")
    train(cfg, extra_callbacks=[Batches()])
    injected = [int(t) for t in np.genfromtxt(Path(cfg.paths.output_dir) / "injections.csv", delimiter=",",
                                              names=True, dtype=None, encoding="utf-8")["tokens"].reshape(-1)]
    n = min(injected[0], 32)  # a text longer than data.seq_len is cut to it
    labels, inputs = seen[0]["labels"], seen[0]["input_ids"]
    assert labels.shape == (2, 33) and inputs.shape == (2, 32) and torch.equal(labels[:, :-1], inputs)
    assert torch.equal(labels[0], torch.from_numpy(instances[0].astype(np.int64)))  # row 0 is not injected
    # prepend: the knowledge, then the row's first 33 - n tokens, so the label token continues the base row
    assert labels[1, n:].tolist() == instances[1, : 33 - n].astype(np.int64).tolist()
    assert labels[1, :n].tolist() != instances[1, :n].astype(np.int64).tolist()
