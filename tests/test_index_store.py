"""The index store: the TokenStore read API, format version 2 (memory-mapped), version 1 still loading,
building from precomputed vectors, and encoding sharded across 2 gloo processes (bit-identical to 1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from jmlr_hf import DocumentIndex
from jmlr_hf.retriever.index import INDEX_FILES, PassageTable, missing_index_files
from jmlr_hf.retriever.residual import ResidualCodec, ResidualStore
from jmlr_hf.retriever.store import TokenStore, VectorStore
from test_index import synthetic_corpus

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "index_store_worker.py"
QUERIES = ["aspirin dose daily", "sepsis fever", "warfarin and heparin"]


def _files_equal(a: Path, b: Path, names=("vectors.npy", "doclens.npy")) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_token_store_reads_agree_with_the_flat_tensor():
    g = torch.Generator().manual_seed(0)
    doclens = np.array([3, 1, 5, 2], dtype=np.int64)
    flat = torch.randn(int(doclens.sum()), 8, generator=g).bfloat16()
    store = VectorStore(flat, doclens)
    assert isinstance(store, TokenStore)
    assert (store.num_passages, store.num_tokens, store.dim, store.bytes_per_token) == (4, 11, 8, 16.0)
    assert torch.equal(store.token_range(2, 7), flat[2:7])
    assert torch.equal(store.take_tokens(np.array([9, 0, 4])), flat[[9, 0, 4]])
    assert torch.equal(store.passage_slice(1, 3), flat[3:9])
    vectors, lengths = store.gather(np.array([2, 0]))
    assert torch.equal(vectors, torch.cat([flat[4:9], flat[0:3]])) and lengths.tolist() == [5, 3]
    assert list(store.chunks(4)) == [(0, 2), (2, 3), (3, 4)]
    assert torch.equal(torch.cat(list(store.token_blocks(0, 4))), flat)


def test_a_mapped_store_reads_its_candidates_from_the_file(tmp_path, monkeypatch):
    """gather() on a mapped store reads the rows (os.preadv, one read per run of consecutive passages) and
    returns what the map holds, in the order asked; if the path now names another file (the folder was
    rewritten) or is gone, it reads through its map instead, never the other file's bytes."""
    from jmlr_hf.retriever.store import bf16_to_bits, map_npy

    g = torch.Generator().manual_seed(0)
    doclens = torch.randint(1, 9, (60,), generator=g).numpy().astype(np.int64)
    flat = torch.randn(int(doclens.sum()), 8, generator=g).bfloat16()
    np.save(tmp_path / "vectors.npy", bf16_to_bits(flat))
    np.save(tmp_path / "doclens.npy", doclens)
    store = VectorStore.from_files(tmp_path / "vectors.npy", tmp_path / "doclens.npy")
    assert store.is_mapped
    reads = []
    real_preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda *a: reads.append(a[2]) or real_preadv(*a))
    in_ram = VectorStore(flat, doclens)
    for passages in ([0, 1, 2, 3], [59, 3, 4, 5, 17, 0], list(range(60)), [7]):
        reads.clear()
        got, lengths = store.gather(np.array(passages))
        want, want_lengths = in_ram.gather(np.array(passages))
        assert (
            torch.equal(got.view(torch.int16), want.view(torch.int16))
            and lengths.tolist() == want_lengths.tolist()
        )
        runs = 1 + sum(b != a + 1 for a, b in zip(passages, passages[1:]))
        assert len(reads) == runs  # one read a run of consecutive passages
    # a store over a view of the map that starts past its first row reads from where the view starts
    skip = int(doclens[:10].sum())
    tail = VectorStore(map_npy(tmp_path / "vectors.npy")[skip:], doclens[10:])
    reads.clear()
    got, _ = tail.gather(np.array([0, 3, 49]))
    want = VectorStore(flat[skip:], doclens[10:]).gather(np.array([0, 3, 49]))[0]
    assert torch.equal(got.view(torch.int16), want.view(torch.int16)) and len(reads) == 3
    (tmp_path / "vectors.npy").unlink()  # the folder rewritten: another file under the same name
    np.save(tmp_path / "vectors.npy", bf16_to_bits(torch.zeros_like(flat)))
    reads.clear()
    got, _ = store.gather(np.array([5, 6]))
    assert torch.equal(got.view(torch.int16), in_ram.gather(np.array([5, 6]))[0].view(torch.int16))
    assert not reads
    (tmp_path / "vectors.npy").unlink()
    assert torch.equal(
        store.gather(np.array([1]))[0].view(torch.int16),
        flat[int(doclens[0]) : int(doclens[:2].sum())].view(torch.int16),
    )


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_v2_save_load_roundtrip_is_memory_mapped_and_searches_alike(tiny_retriever, tmp_path, backend):
    kwargs = {"nlist": 8} if backend == "faiss" else {}
    index = DocumentIndex.build(synthetic_corpus(80), tiny_retriever, backend=backend, **kwargs)
    index.save(tmp_path)
    config = json.loads((tmp_path / "index_config.json").read_text())
    assert config["format_version"] == 2 and config["num_tokens"] == index.num_tokens
    assert missing_index_files(tmp_path) == []
    assert not (tmp_path / "vectors.safetensors").exists()
    loaded = DocumentIndex.load(tmp_path, tiny_retriever)
    # the vectors are a read-only map of vectors.npy, the passages a mapped arrow table
    assert loaded.store.is_mapped and isinstance(loaded.store._bits, np.memmap)
    assert not loaded.store._bits.flags.writeable
    assert isinstance(loaded.passages, PassageTable) and loaded.passages == index.passages
    assert loaded.passages["doc_id"] == index.passages["doc_id"]
    assert torch.equal(loaded.store.vectors, index.store.vectors)
    assert np.array_equal(loaded.store.doclens, index.store.doclens)
    assert loaded.search(QUERIES, k=5) == index.search(QUERIES, k=5)
    assert loaded.hit(3, 1.0)["passage_id"] == index.passages["passage_id"][3]
    assert loaded.passage(3) == index.passage(3)
    assert loaded.passage_texts([0, 2]) == index.passage_texts([0, 2])
    if backend == "faiss":  # the passages' mean token vectors: saved, mapped, the store's means
        from jmlr_hf.retriever.backends.faiss import passage_means

        means = loaded.backend.passage_means
        assert isinstance(means, np.memmap) and not means.flags.writeable
        np.testing.assert_array_equal(means, passage_means(loaded.store))
        expected = index.store.vectors[: index.store.doclens[0]].float().mean(0).numpy()
        np.testing.assert_allclose(means[0].astype(np.float32), expected.astype(np.float32), atol=1e-3)


def test_a_faiss_index_saved_without_passage_means_loads_and_searches_alike(tiny_retriever, tmp_path):
    """A faiss index saved before the passages' mean vectors existed (no file, no config key) is complete,
    loads, computes the means when first searched, ranks as one saved with them, and saves them again."""
    index = DocumentIndex.build(synthetic_corpus(80), tiny_retriever, backend="faiss", nlist=8, max_rerank=4)
    index.save(tmp_path / "new")
    index.save(tmp_path / "old")
    (tmp_path / "old" / "passage_means.npy").unlink()
    config = json.loads((tmp_path / "old" / "index_config.json").read_text())
    del config["backend_params"]["passage_means"]
    (tmp_path / "old" / "index_config.json").write_text(json.dumps(config))
    assert missing_index_files(tmp_path / "old") == []
    (tmp_path / "new" / "passage_means.npy").rename(tmp_path / "moved.npy")
    assert missing_index_files(tmp_path / "new") == ["passage_means.npy"]
    (tmp_path / "moved.npy").rename(tmp_path / "new" / "passage_means.npy")
    old = DocumentIndex.load(tmp_path / "old", tiny_retriever)
    assert old.backend.passage_means is None
    new = DocumentIndex.load(tmp_path / "new", tiny_retriever)
    assert old.search(QUERIES, k=5) == new.search(QUERIES, k=5) == index.search(QUERIES, k=5)
    np.testing.assert_array_equal(old.backend.passage_means, new.backend.passage_means)
    old.save(tmp_path / "linked")  # its folder is intact: linked, still without the means
    assert not (tmp_path / "linked" / "passage_means.npy").exists()
    assert DocumentIndex.load(tmp_path / "linked", tiny_retriever).search(QUERIES, k=5) == new.search(
        QUERIES, k=5
    )


def test_search_settings_of_a_loaded_faiss_index_take_effect(tiny_retriever, tmp_path):
    """nprobe / tokens_per_query_token / max_rerank set on a loaded index's backend search as an index built
    with them (the faiss index's own nprobe follows the backend's)."""
    corpus = synthetic_corpus(120)
    settings = {"nprobe": 1, "tokens_per_query_token": 8, "max_rerank": 8}
    DocumentIndex.build(corpus, tiny_retriever, backend="faiss", nlist=16).save(tmp_path / "default")
    built = DocumentIndex.build(corpus, tiny_retriever, backend="faiss", nlist=16, **settings)
    loaded = DocumentIndex.load(tmp_path / "default", tiny_retriever)
    before = loaded.search(QUERIES, k=5)
    for name, value in settings.items():
        setattr(loaded.backend, name, value)
    assert loaded.search(QUERIES, k=5) == built.search(QUERIES, k=5) != before
    assert loaded.backend.index.nprobe == 1


def test_saving_a_mapped_index_hard_links_its_files(tiny_retriever, tmp_path):
    DocumentIndex.build(synthetic_corpus(30), tiny_retriever, backend="exact").save(tmp_path / "a")
    loaded = DocumentIndex.load(tmp_path / "a", tiny_retriever)
    loaded.save(tmp_path / "a")  # its own folder: nothing to do
    loaded.save(tmp_path / "b")
    for name in INDEX_FILES:
        assert os.stat(tmp_path / "a" / name).st_ino == os.stat(tmp_path / "b" / name).st_ino, name
    # add() moves the vectors to RAM: the next save writes new files and leaves the old ones alone
    loaded.add([{"id": "new", "title": "New", "text": "insulin dose weekly."}])
    assert not loaded.store.is_mapped
    loaded.save(tmp_path / "b")
    assert os.stat(tmp_path / "a" / "vectors.npy").st_ino != os.stat(tmp_path / "b" / "vectors.npy").st_ino
    again = DocumentIndex.load(tmp_path / "b", tiny_retriever)
    assert len(again) == len(loaded) and torch.equal(again.store.vectors, loaded.store.vectors)
    assert again.passages["doc_id"][-1] == "new" and again.search(QUERIES, k=5) == loaded.search(QUERIES, k=5)


def test_a_version_1_folder_still_loads(tiny_retriever, tmp_path):
    index = DocumentIndex.build(synthetic_corpus(40), tiny_retriever, backend="exact")
    pq.write_table(index.passages.table, str(tmp_path / "passages.parquet"))  # the version-1 layout
    save_file(
        {"vectors": index.store.vectors, "doclens": torch.from_numpy(index.store.doclens)},
        str(tmp_path / "vectors.safetensors"),
    )
    config = {
        "format_version": 1,
        "backend": "exact",
        "backend_params": {"chunk_tokens": 262144},
        "retriever_fingerprint": index.fingerprint,
        "dim": tiny_retriever.config.dim,
        "num_passages": len(index),
        "chunk_tokens": 150,
        "chunk_overlap": 32,
        "batch_size": 32,
    }
    (tmp_path / "index_config.json").write_text(json.dumps(config))
    assert missing_index_files(tmp_path) == []
    loaded = DocumentIndex.load(tmp_path, tiny_retriever)
    assert loaded.passages == index.passages and torch.equal(loaded.store.vectors, index.store.vectors)
    assert loaded.search(QUERIES, k=5) == index.search(QUERIES, k=5)
    loaded.save(tmp_path)  # saving rewrites it as version 2
    assert json.loads((tmp_path / "index_config.json").read_text())["format_version"] == 2
    assert not (tmp_path / "vectors.safetensors").exists()
    assert torch.equal(DocumentIndex.load(tmp_path, tiny_retriever).store.vectors, index.store.vectors)


def test_an_unknown_format_version_names_the_file_and_the_version(tiny_retriever, tmp_path):
    DocumentIndex.build(synthetic_corpus(10), tiny_retriever, backend="exact").save(tmp_path)
    config = json.loads((tmp_path / "index_config.json").read_text())
    (tmp_path / "index_config.json").write_text(json.dumps({**config, "format_version": 7}))
    with pytest.raises(ValueError, match=r"index_config.json: unsupported index format version 7"):
        DocumentIndex.load(tmp_path, tiny_retriever)


def test_building_into_a_folder_is_bit_identical_to_building_in_ram(tiny_retriever, tmp_path):
    settings = dict(backend="faiss", batch_size=7, nlist=8, precision="fp32")
    in_ram = DocumentIndex.build(synthetic_corpus(70), tiny_retriever, **settings)
    mapped = DocumentIndex.build(synthetic_corpus(70), tiny_retriever, folder=tmp_path / "idx", **settings)
    assert mapped.store.is_mapped and mapped.folder == tmp_path / "idx"
    assert mapped.last_encode_stats["passages_encoded"] == len(mapped) == len(in_ram)
    assert torch.equal(mapped.store.vectors, in_ram.store.vectors)
    assert np.array_equal(mapped.store.doclens, in_ram.store.doclens)
    assert mapped.search(QUERIES, k=5) == in_ram.search(QUERIES, k=5)
    loaded = DocumentIndex.load(tmp_path / "idx", tiny_retriever)
    assert loaded.search(QUERIES, k=5, precision="fp32") == in_ram.search(QUERIES, k=5)
    # a refresh into the folder the index is mapped from replaces its files (the old map stays valid)
    old = mapped.store.vectors
    with torch.no_grad():
        tiny_retriever.linear.weight.mul_(-1)
    try:
        mapped.refresh(tiny_retriever, folder=tmp_path / "idx")
        in_ram.refresh(tiny_retriever)
        assert torch.equal(mapped.store.vectors, in_ram.store.vectors)
        assert torch.equal(old, -in_ram.store.vectors)  # still the old vectors (negated head, same norms)
        loaded = DocumentIndex.load(tmp_path / "idx", tiny_retriever)
        assert not mapped.is_stale
        assert loaded.search(QUERIES, k=5, precision="fp32") == in_ram.search(QUERIES, k=5)
    finally:
        with torch.no_grad():
            tiny_retriever.linear.weight.mul_(-1)


def test_from_vectors_writes_a_mapped_index_in_blocks(tiny_retriever, tmp_path, monkeypatch):
    from jmlr_hf.retriever import index as index_module

    monkeypatch.setattr(index_module, "_WRITE_BLOCK_TOKENS", 50)  # many blocks
    built = DocumentIndex.build(synthetic_corpus(40), tiny_retriever, backend="exact")
    columns = {c: built.passages[c] for c in ("passage_id", "doc_id", "title", "text")}
    for vectors in (built.store.vectors, built.store.vectors.float().numpy()):
        index = DocumentIndex.from_vectors(
            columns, vectors, built.store.doclens, tiny_retriever, backend="exact", folder=tmp_path / "v"
        )
        assert index.store.is_mapped and torch.equal(index.store.vectors, built.store.vectors)
        assert index.search(QUERIES, k=5) == built.search(QUERIES, k=5)
    in_ram = DocumentIndex.from_vectors(
        pa.table(columns), built.store.vectors, built.store.doclens, tiny_retriever
    )
    assert not in_ram.store.is_mapped and in_ram.search(QUERIES, k=5) == built.search(QUERIES, k=5)
    with pytest.raises(ValueError, match="must agree"):
        DocumentIndex.from_vectors(columns, built.store.vectors[:-1], built.store.doclens, tiny_retriever)


RESIDUAL = {"compression": "residual", "compression_kwargs": {"n_centroids": 32}}


def _overlap(a: list, b: list) -> float:
    ids = lambda hits: {h["passage_id"] for h in hits}  # noqa: E731
    return float(np.mean([len(ids(x) & ids(y)) / len(y) for x, y in zip(a, b)]))


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_residual_index_saves_loads_mapped_and_adds(tiny_retriever, tmp_path, backend):
    kwargs = {"nlist": 8} if backend == "faiss" else {}
    corpus = synthetic_corpus(80)
    bf16 = DocumentIndex.build(corpus, tiny_retriever, backend=backend, **kwargs)
    index = DocumentIndex.build(corpus, tiny_retriever, backend=backend, **RESIDUAL, **kwargs)
    assert isinstance(index.store, ResidualStore) and index.compression == "residual"
    dim = tiny_retriever.config.dim
    assert index.store.bytes_per_token == 2 + dim // 4 + 2 <= 40  # id, 2-bit residual, float16 scale
    dim128 = ResidualCodec(
        np.eye(128, dtype=np.float32), np.zeros((128, 3)), np.zeros((128, 4)), 2, scaled=True
    )
    assert dim128.bytes_per_token() == 36  # the default codec at the default retriever's dim
    cos = (index.store.token_range(0, index.num_tokens).float() * bf16.store.vectors.float()).sum(1)
    assert cos.mean() > 0.9, cos.mean()
    found, exact = index.search(QUERIES, k=10), bf16.search(QUERIES, k=10)
    # a 16-dim toy retriever over bags of 30 words: many near-ties, so the bound is loose; what is lost
    # is among them (the compressed top 5 stay within the bf16 top 20)
    within = _overlap(bf16.search(QUERIES, k=20), [hits[:5] for hits in found])
    assert _overlap(found, exact) >= 0.6 and within >= 0.9, (_overlap(found, exact), within)
    index.save(tmp_path / "a")
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert "vectors.npy" not in names and set(ResidualStore.FILES) <= names
    config = json.loads((tmp_path / "a" / "index_config.json").read_text())
    assert config["store"]["kind"] == "residual" and config["store"]["n_centroids"] == 32
    assert config["store"]["compression_kwargs"] == {"n_centroids": 32}
    assert missing_index_files(tmp_path / "a") == []
    loaded = DocumentIndex.load(tmp_path / "a", tiny_retriever)
    assert isinstance(loaded.store, ResidualStore) and loaded.compression_kwargs == {"n_centroids": 32}
    for array in (loaded.store.codes, loaded.store.residuals):
        assert isinstance(array, np.memmap) and not array.flags.writeable
    assert np.array_equal(loaded.store.codes, index.store.codes)
    assert loaded.search(QUERIES, k=10) == found
    # a mapped compressed index hard-links its files; a missing one is reported
    loaded.save(tmp_path / "b")
    for name in ResidualStore.FILES:
        assert os.stat(tmp_path / "a" / name).st_ino == os.stat(tmp_path / "b" / name).st_ino, name
    (tmp_path / "b" / "codes.npy").unlink()
    assert missing_index_files(tmp_path / "b") == ["codes.npy"]
    # add(): compressed with the index's codec, searchable, saved and loaded back
    codec = loaded.store.codec
    loaded.add([{"id": "new", "title": "New", "text": "insulin dose weekly glargine."}])
    assert loaded.store.codec is codec and loaded.store.num_passages == len(loaded) == 81
    vectors, _ = loaded._encode_texts(["New"], ["insulin dose weekly glargine."], False)
    codes, rows = codec.compress(vectors)
    assert np.array_equal(loaded.store.codes[-len(codes) :], codes)
    assert torch.equal(loaded.store.passage_slice(80, 81), codec.decompress(codes, rows))
    assert "new" in [h["doc_id"] for h in loaded.search(["insulin dose weekly"], k=81)[0]]
    loaded.save(tmp_path / "c")
    again = DocumentIndex.load(tmp_path / "c", tiny_retriever)
    assert np.array_equal(again.store.residuals, loaded.store.residuals)
    assert again.search(QUERIES, k=10) == loaded.search(QUERIES, k=10)


def test_residual_index_in_a_folder_from_vectors_and_refresh(tiny_retriever, tmp_path):
    settings = dict(backend="exact", precision="fp32", **RESIDUAL)
    in_ram = DocumentIndex.build(synthetic_corpus(60), tiny_retriever, **settings)
    mapped = DocumentIndex.build(synthetic_corpus(60), tiny_retriever, folder=tmp_path / "idx", **settings)
    assert not (tmp_path / "idx" / "vectors.npy").exists() and missing_index_files(tmp_path / "idx") == []
    assert isinstance(mapped.store.codes, np.memmap)
    assert np.array_equal(mapped.store.codes, in_ram.store.codes)
    assert np.array_equal(mapped.store.residuals, in_ram.store.residuals)
    assert mapped.search(QUERIES, k=5) == in_ram.search(QUERIES, k=5)
    # from precomputed vectors (bf16 bits, as a benchmark maps them), in RAM and into a folder
    bf16 = DocumentIndex.build(synthetic_corpus(60), tiny_retriever, backend="exact", precision="fp32")
    columns = {c: bf16.passages[c] for c in ("passage_id", "doc_id", "title", "text")}
    bits = bf16.store.vectors.view(torch.int16).numpy().view(np.uint16)
    for folder in (None, tmp_path / "v"):
        index = DocumentIndex.from_vectors(
            columns, bits, bf16.store.doclens, tiny_retriever, backend="exact", folder=folder, **RESIDUAL
        )
        assert np.array_equal(index.store.codes, in_ram.store.codes)
        assert index.search(QUERIES, k=5, precision="fp32") == in_ram.search(QUERIES, k=5)
    reloaded = DocumentIndex.load(tmp_path / "v", tiny_retriever)
    assert reloaded.search(QUERIES, k=5, precision="fp32") == in_ram.search(QUERIES, k=5)
    # refresh re-fits the codec on the new vectors, with the same options, into the same folder
    old = mapped.store.codec.centroids.copy()
    with torch.no_grad():
        tiny_retriever.linear.weight.mul_(-1)
    try:
        mapped.refresh(tiny_retriever, folder=tmp_path / "idx")
        assert isinstance(mapped.store, ResidualStore) and not mapped.is_stale
        assert mapped.store.codec.n_centroids == 32
        np.testing.assert_allclose(mapped.store.codec.centroids, -old, atol=1e-5)  # the negated head's
        loaded = DocumentIndex.load(tmp_path / "idx", tiny_retriever)
        assert loaded.search(QUERIES, k=5, precision="fp32") == mapped.search(QUERIES, k=5)
    finally:
        with torch.no_grad():
            tiny_retriever.linear.weight.mul_(-1)


# ---------------------------------------------------------------------------------------------------
# 2 processes (gloo, CPU)
# ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_index(tmp_path_factory):
    from jmlr_hf.models import MissingDefaultModelError, default_encoder_path

    try:
        default_encoder_path()
    except MissingDefaultModelError as err:
        pytest.skip(str(err))
    out = tmp_path_factory.mktemp("sharded")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(WORKER),
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_processes_build_an_index_bit_identical_to_one_process(two_process_index):
    out, records = two_process_index
    _files_equal(
        out / "built",
        out / "reference",
        names=("vectors.npy", "doclens.npy", "faiss.index", "passage_means.npy"),
    )
    assert PassageTable.from_file(out / "built" / "passages.arrow") == PassageTable.from_file(
        out / "reference" / "passages.arrow"
    )
    built, reference = (
        json.loads((out / f / "index_config.json").read_text()) for f in ("built", "reference")
    )
    assert built == reference
    assert records[0]["build_hits"] == records[1]["build_hits"]


def test_two_processes_each_encode_half_and_refresh_identically(two_process_index):
    out, records = two_process_index
    n = json.loads((out / "built" / "index_config.json").read_text())["num_passages"]
    for what in ("build", "refresh"):
        counts = [r[what]["passages_encoded"] for r in records]
        assert sum(counts) == n and all(abs(c - n / 2) <= 7 for c in counts), (what, counts)  # batches of 7
        assert [r[what]["rank"] for r in records] == [0, 1] and records[0][what]["world_size"] == 2
    _files_equal(
        out / "refreshed",
        out / "reference_refreshed",
        names=("vectors.npy", "doclens.npy", "faiss.index", "passage_means.npy"),
    )
    assert (
        not (out / "refreshed" / "vectors.npy").read_bytes() == (out / "built" / "vectors.npy").read_bytes()
    )
    assert records[0]["refresh_hits"] == records[1]["refresh_hits"] and all(r["mapped"] for r in records)
    # the passages did not change: the refreshed folder shares the built one's file
    assert (
        os.stat(out / "refreshed" / "passages.arrow").st_ino
        == os.stat(out / "built" / "passages.arrow").st_ino
    )


def test_jmlr_index_under_torchrun_matches_one_process(bert_tokenizer, tmp_path):
    from testing_utils import make_tiny_retriever, write_jsonl

    make_tiny_retriever(bert_tokenizer, seed=0).save_pretrained(tmp_path / "retriever")
    corpus = write_jsonl(tmp_path / "corpus.jsonl", synthetic_corpus(60))
    jmlr = str(Path(sys.executable).with_name("jmlr"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)

    def index_argv(output: Path) -> list[str]:
        return [jmlr, "index", "--corpus", str(corpus), "--retriever", str(tmp_path / "retriever")] + [
            "--output",
            str(output),
            "--backend",
            "faiss",
            "-q",
        ]

    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    launch += ["127.0.0.1", "--master_port", str(_free_port()), "--no-python"]
    runs = {"two": launch + index_argv(tmp_path / "two"), "one": index_argv(tmp_path / "one")}
    outputs = {}
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        outputs[name] = proc.stdout
    assert outputs["two"].count("Indexed 60 documents") == 1  # rank 0 alone prints
    _files_equal(
        tmp_path / "two",
        tmp_path / "one",
        names=("vectors.npy", "doclens.npy", "faiss.index", "passage_means.npy"),
    )
    configs = [json.loads((tmp_path / f / "index_config.json").read_text()) for f in ("one", "two")]
    assert configs[0] == configs[1]


def test_a_failure_on_one_process_stops_every_process_of_a_sharded_build(tmp_path):
    """Rank 1's encoder raises during a 2-process build: rank 0 raises too, at once, naming what failed,
    instead of waiting at the next barrier until the collective timeout (60 s here)."""
    from jmlr_hf.models import MissingDefaultModelError, default_encoder_path

    try:
        default_encoder_path()
    except MissingDefaultModelError as err:
        pytest.skip(str(err))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(WORKER), str(tmp_path), "--fail-rank", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    seconds, errors = {}, {}
    for rank in (0, 1):
        first, message = (tmp_path / f"error{rank}.txt").read_text(encoding="utf-8").split("\n", 1)
        seconds[rank], errors[rank] = float(first), message
    assert "injected encoder failure" in errors[1]
    assert "other process(es) of the group failed" in errors[0] and "encoding into" in errors[0], errors[0]
    assert seconds[0] < 30, seconds  # not the 60 s collective timeout
