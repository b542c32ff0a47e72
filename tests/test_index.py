"""DocumentIndex: exact search against the slow reference, faiss recall, persistence, refresh, bad input."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jmlr_hf import DocumentIndex
from jmlr_hf.data import chunk_corpus, load_corpus
from jmlr_hf.data.corpus import passage_text_for_encoding
from jmlr_hf.retriever import StaleIndexError, maxsim
from jmlr_hf.retriever.index import _FaissBackend
from testing_utils import make_tiny_retriever

WORDS = "aspirin metformin insulin statin warfarin heparin asthma sepsis anemia fever cough rash pain dose daily weekly".split()


def synthetic_corpus(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        picks = torch.randint(len(WORDS), (int(torch.randint(5, 40, (1,), generator=g)),), generator=g)
        rows.append(
            {"id": f"d{i}", "title": f"Guideline {i}", "text": " ".join(WORDS[j] for j in picks) + "."}
        )
    return rows


def reference_ranking(index: DocumentIndex, queries: list[str], k: int):
    """Slow reference: encode every passage separately and score with the padded MaxSim."""
    retriever = index.retriever
    texts = [passage_text_for_encoding(t, x) for t, x in zip(index.passages["title"], index.passages["text"])]
    docs = retriever.encode_documents(texts, precision="fp32")
    q = retriever.encode_queries(queries, precision="fp32")
    scores = maxsim(q.embeddings, q.mask, docs.embeddings.bfloat16().float(), docs.mask)
    return scores.topk(k, dim=1)


def test_exact_search_matches_reference(tiny_retriever):
    index = DocumentIndex.build(synthetic_corpus(60), tiny_retriever, backend="exact", batch_size=7)
    assert index.backend.name == "exact"
    queries = ["aspirin dose daily", "sepsis fever", "warfarin and heparin"]
    ref = reference_ranking(index, queries, k=10)
    index.backend.chunk_tokens = 97  # force many chunks
    scores, ids = index.search_encoded(tiny_retriever.encode_queries(queries, precision="fp32"), k=10)
    torch.testing.assert_close(scores, ref.values, rtol=2e-2, atol=5e-2)
    assert (ids[:, 0] == ref.indices[:, 0]).all()
    hits = index.search(queries, k=10)
    assert [len(h) for h in hits] == [10, 10, 10]
    assert set(hits[0][0]) == {"passage_id", "doc_id", "title", "text", "score"}
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(hits[0]))


def test_passages_and_their_stored_vectors_by_index(tiny_retriever):
    index = DocumentIndex.build(synthetic_corpus(20), tiny_retriever, backend="exact")
    ids = [3, 0, 3]
    assert index.passage(3) == {"title": index.passages["title"][3], "text": index.passages["text"][3]}
    texts = index.passage_texts(ids)
    assert texts == [
        passage_text_for_encoding(index.passages["title"][i], index.passages["text"][i]) for i in ids
    ]
    stored = index.gather_vectors(ids)
    fresh = tiny_retriever.encode_documents(texts, precision="fp32")
    assert stored.embeddings.dtype == torch.float32
    assert stored.mask.sum(1).tolist() == fresh.mask.sum(1).tolist()
    q = tiny_retriever.encode_queries(["aspirin dose daily"], precision="fp32")
    torch.testing.assert_close(
        maxsim(q.embeddings, q.mask, *stored), maxsim(q.embeddings, q.mask, *fresh), rtol=2e-2, atol=5e-2
    )
    assert index.num_tokens == int(index.store.vectors.shape[0])
    before = index.content_id
    index.add([{"id": "new", "title": "", "text": "aspirin weekly"}])
    assert index.content_id != before and index.num_passages == 21


def test_backends_implement_one_interface():
    from jmlr_hf.retriever.backends import BACKENDS, IndexBackend

    assert set(BACKENDS) == {"exact", "faiss"}
    for name, backend in BACKENDS.items():
        assert issubclass(backend, IndexBackend) and backend.name == name
    assert BACKENDS["faiss"] is _FaissBackend  # the name benchmarks import from jmlr_hf.retriever.index
    with pytest.raises(TypeError, match="abstract"):
        IndexBackend()


def test_faiss_backend_agrees_with_exact_on_small_corpus(tiny_retriever):
    corpus = synthetic_corpus(300, seed=1)
    exact = DocumentIndex.build(corpus, tiny_retriever, backend="exact")
    fast = DocumentIndex.build(
        corpus, tiny_retriever, backend="faiss", nlist=16, nprobe=16, tokens_per_query_token=256
    )
    queries = ["insulin weekly", "rash and cough", "statin pain", "anemia"]
    e = [{h["passage_id"] for h in hits} for hits in exact.search(queries, k=10)]
    f = [{h["passage_id"] for h in hits} for hits in fast.search(queries, k=10)]
    recall = sum(len(a & b) for a, b in zip(e, f)) / sum(len(a) for a in e)
    assert recall >= 0.95


def test_faiss_results_do_not_depend_on_the_batch_and_long_queries_share_the_hit_budget(tiny_retriever):
    corpus = synthetic_corpus(300, seed=1)
    fast = DocumentIndex.build(corpus, tiny_retriever, backend="faiss", nlist=16, nprobe=16)
    long_query = " ".join(["an older patient with insulin weekly dosing and statin pain"] * 8)
    alone = fast.search(["anemia"], k=10)[0]
    batched = fast.search(["anemia", long_query], k=10)[0]
    assert [h["passage_id"] for h in batched] == [h["passage_id"] for h in alone]
    assert [h["score"] for h in batched] == pytest.approx([h["score"] for h in alone], abs=1e-5)
    backend = fast.backend
    assert backend.hits_per_token(32) == backend.tokens_per_query_token == 512
    assert backend.hits_per_token(64) == 256  # the hits of a 32-token query, shared
    assert backend.hits_per_token(400) == backend.min_tokens_per_query_token == 128


def test_chunking_by_tokens_with_overlap(bert_tokenizer):
    text = " ".join(f"word{i}" for i in range(400))
    passages = chunk_corpus(
        load_corpus([{"id": "long", "title": "T", "text": text}]), bert_tokenizer, 100, 20
    )
    n_tokens = len(bert_tokenizer(text, add_special_tokens=False)["input_ids"])
    lengths = [len(bert_tokenizer(p, add_special_tokens=False)["input_ids"]) for p in passages["text"]]
    assert all(n <= 100 for n in lengths) and lengths[0] == 100
    assert passages["passage_id"][:2] == ["long#0", "long#1"] and set(passages["doc_id"]) == {"long"}
    # consecutive windows overlap by 20 tokens and together cover the whole text
    first, second = passages["text"][0].split(), passages["text"][1].split()
    assert first[-1] in second and passages["text"][-1].endswith("word399")
    assert sum(lengths) == pytest.approx(n_tokens + 20 * (len(lengths) - 1), abs=len(lengths))


def test_save_load_roundtrip_and_staleness(tiny_retriever, bert_tokenizer, tmp_path):
    for backend in ("exact", "faiss"):
        index = (
            DocumentIndex.build(synthetic_corpus(80), tiny_retriever, backend=backend, nlist=8)
            if backend == "faiss"
            else DocumentIndex.build(synthetic_corpus(80), tiny_retriever, backend=backend)
        )
        index.save(tmp_path / backend)
        config = json.loads((tmp_path / backend / "index_config.json").read_text())
        assert config["backend"] == backend
        loaded = DocumentIndex.load(tmp_path / backend, tiny_retriever)
        assert loaded.passages == index.passages
        torch.testing.assert_close(loaded.store.vectors, index.store.vectors, rtol=0, atol=0)
        assert loaded.search(["aspirin daily"], k=5) == index.search(["aspirin daily"], k=5)
    bf16 = DocumentIndex.build(synthetic_corpus(20), tiny_retriever, backend="exact", precision="bf16")
    bf16.save(tmp_path / "bf16")
    assert (
        DocumentIndex.load(tmp_path / "bf16", tiny_retriever).precision == "bf16"
    )  # queries encoded as built
    other = make_tiny_retriever(bert_tokenizer, seed=1)
    with pytest.raises(StaleIndexError, match="refresh"):
        DocumentIndex.load(tmp_path / "exact", other)
    stale = DocumentIndex.load(tmp_path / "exact", other, allow_stale=True)
    assert stale.is_stale
    stale.refresh(other)
    assert not stale.is_stale
    fresh = DocumentIndex.build(synthetic_corpus(80), other, backend="exact")
    torch.testing.assert_close(stale.store.vectors, fresh.store.vectors)


def test_refresh_follows_weight_changes(tiny_retriever):
    index = DocumentIndex.build(synthetic_corpus(30), tiny_retriever, backend="exact")
    before = index.store.vectors.clone()
    with torch.no_grad():
        tiny_retriever.linear.weight.add_(0.5)
    assert index.is_stale
    seconds = index.refresh()
    assert seconds > 0 and not index.is_stale
    assert not torch.equal(before, index.store.vectors)


def test_add_documents_equals_building_on_the_union(tiny_retriever):
    corpus, extra = synthetic_corpus(41), {"id": "new", "title": "Zebra", "text": "zebra zebra unique marker"}
    full = DocumentIndex.build(corpus[:40] + [extra], tiny_retriever, backend="exact")
    queries = ["zebra unique marker", "aspirin daily"]
    for backend, kwargs in (
        ("exact", {}),
        ("faiss", {"nlist": 8, "nprobe": 8, "tokens_per_query_token": 512}),
    ):
        index = DocumentIndex.build(corpus[:40], tiny_retriever, backend=backend, **kwargs)
        assert index.add([extra]) == 1 and len(index) == 41
        if backend == "faiss":  # the passages' mean vectors extended as if computed on the union
            from jmlr_hf.retriever.backends.faiss import passage_means

            np.testing.assert_array_equal(index.backend.passage_means, passage_means(index.store))
        assert index.passages == full.passages
        assert [[h["passage_id"] for h in r] for r in index.search(queries, k=5)] == [
            [h["passage_id"] for h in r] for r in full.search(queries, k=5)
        ]
        with pytest.raises(ValueError, match="already in the index"):
            index.add([{"id": "new", "title": "", "text": "again"}])


def _bad_jsonl(folder: Path) -> Path:
    path = folder / "bad.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{not json\n')
    return path


@pytest.mark.parametrize(
    ("corpus", "kwargs", "error", "match"),
    [
        pytest.param(lambda tmp: [], {}, ValueError, "empty", id="empty"),
        pytest.param(
            lambda tmp: [{"id": "a", "text": "ok"}, {"id": "b", "text": "  "}],
            {},
            ValueError,
            r"row 1 \(id 'b'\)",
            id="blank-text",
        ),
        pytest.param(lambda tmp: [{"id": "a", "text": 12}], {}, ValueError, "row 0", id="text-not-a-string"),
        pytest.param(
            lambda tmp: [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}],
            {},
            ValueError,
            "duplicate id 'a' in rows 0 and 1",
            id="duplicate-id",
        ),
        pytest.param(lambda tmp: ["x"], {"backend": "plaid"}, ValueError, "backend", id="unknown-backend"),
        pytest.param(_bad_jsonl, {}, ValueError, "bad.jsonl, line 2", id="invalid-json-line"),
        pytest.param(
            lambda tmp: tmp / "missing.jsonl", {}, FileNotFoundError, "missing.jsonl", id="missing-file"
        ),
    ],
)
def test_build_refuses_bad_corpora(corpus, kwargs, error, match, tiny_retriever, tmp_path):
    with pytest.raises(error, match=match):
        DocumentIndex.build(corpus(tmp_path), tiny_retriever, **kwargs)


def test_bad_search_and_load_arguments(tiny_retriever, tmp_path):
    index = DocumentIndex.build(["one passage", "another passage"], tiny_retriever)
    with pytest.raises(ValueError, match="larger than the number of passages"):
        index.search(["q"], k=3)
    with pytest.raises(ValueError, match="query 0"):
        index.search([""], k=1)
    with pytest.raises(FileNotFoundError, match="index_config.json"):
        DocumentIndex.load(tmp_path, tiny_retriever)


def test_corpus_formats(tmp_path):
    rows = [{"id": "g1", "title": "A", "text": "alpha"}, {"id": "g2", "title": "B", "clean_text": "beta"}]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    from datasets import Dataset

    Dataset.from_list([{"id": "g1", "title": "A", "text": "alpha"}]).to_parquet(str(tmp_path / "c.parquet"))
    assert load_corpus(path)["text"] == ["alpha", "beta"]  # Meditron-style clean_text
    assert load_corpus(tmp_path / "c.parquet")["id"] == ["g1"]
    assert load_corpus(["x", "y"])["id"] == ["doc-0", "doc-1"]
    with pytest.raises(ValueError, match="unsupported corpus format"):
        (tmp_path / "c.csv").write_text("id,text\n")
        load_corpus(tmp_path / "c.csv")


@pytest.mark.slow
def test_faiss_recall_on_ngc_passages(ngc_path, encoder_path):
    """faiss backend recall@30 >= 0.99 against exact search on a few thousand real NGC passages."""
    from jmlr_hf import JMLRRetriever

    torch.manual_seed(0)
    retriever = JMLRRetriever.from_encoder(encoder_path).eval()
    docs = [json.loads(line) for line in itertools.islice(open(ngc_path, encoding="utf-8"), 150)]
    exact = DocumentIndex.build(docs, retriever, backend="exact", batch_size=64)
    assert exact.num_passages >= 2000
    fast = copy.copy(exact)  # same passages and vectors; only the search backend differs
    fast.backend = _FaissBackend()
    fast.backend.build(exact.store)
    # realistic queries: the first 40 MedQA questions of the real MIRAGE benchmark (as in bench/retrieval.py)
    mirage = json.loads((ngc_path.parent.parent / "mirage" / "benchmark.json").read_text(encoding="utf-8"))[
        "medqa"
    ]
    queries = [mirage[qid]["question"] for qid in sorted(mirage)[:40]]
    e = exact.search(queries, k=30)
    f = fast.search(queries, k=30)
    recall = sum(len({h["passage_id"] for h in a} & {h["passage_id"] for h in b}) for a, b in zip(e, f)) / (
        30 * len(queries)
    )
    assert recall >= 0.99, recall


def test_approximate_maxsim_matches_the_dense_reference():
    """The O(hits) candidate score equals the [query tokens x candidates] matrix it stands for: per query
    token the larger of its similarity to the candidate's mean vector and its best hit in the candidate."""
    from jmlr_hf.retriever.index import _approximate_maxsim

    rng = np.random.default_rng(0)
    for _ in range(20):
        lq, tpq, width = (int(x) for x in (rng.integers(1, 40), rng.integers(1, 50), rng.integers(1, 300)))
        sims = -np.sort(-rng.normal(size=(lq, tpq)).astype(np.float32), axis=1)  # best first, like faiss
        cols = rng.integers(0, width, size=(lq, tpq))
        hit = np.cumprod(rng.random((lq, tpq)) < 0.9, axis=1).astype(bool)  # misses (-1) end a row
        rows = np.nonzero(hit)[0]
        q = torch.randn(lq, 8)
        means = rng.normal(size=(width, 8)).astype(np.float32)
        dense = (q.double() @ torch.from_numpy(means.astype(np.float64)).T).numpy()
        np.maximum.at(dense, (rows, cols[hit]), sims[hit])
        got = _approximate_maxsim(q, rows, cols[hit], sims[hit], means)
        np.testing.assert_allclose(got, dense.sum(0), rtol=1e-4, atol=1e-3)


def test_candidate_scores_match_a_loop_reference_on_both_bookkeeping_paths(monkeypatch):
    """The passages a query's faiss hits reach and their approximate MaxSim (per query token its best hit in
    the passage, else at least its similarity to the passage's mean token vector) equal a loop over the
    hits and the passage's tokens, with per-passage arrays (stores up to _DENSE_CANDIDATES_MAX passages)
    and with sorted hits (larger stores); pruning keeps the best by that score."""
    from jmlr_hf.retriever.backends.faiss import FaissBackend, passage_means
    from jmlr_hf.retriever.store import VectorStore

    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 30, 400)
    vectors = torch.nn.functional.normalize(torch.randn(int(lengths.sum()), 8), dim=-1)
    store = VectorStore(vectors, lengths)
    passage_of = np.repeat(np.arange(len(lengths)), lengths)
    for _ in range(10):
        lq, tpq = int(rng.integers(1, 12)), int(rng.integers(1, 60))
        q = torch.nn.functional.normalize(torch.randn(lq, 8), dim=-1)
        sims = -np.sort(-rng.normal(size=(lq, tpq)).astype(np.float32), axis=1)  # best first, like faiss
        token_ids = rng.integers(0, store.num_tokens, size=(lq, tpq))
        token_ids[np.cumprod(rng.random((lq, tpq)) < 0.95, axis=1) == 0] = -1  # misses end a row
        reached = sorted({int(passage_of[t]) for t in token_ids.ravel() if t >= 0})
        expected = []
        for p in reached:
            mean = store.vectors[passage_of == p].float().mean(0)
            total = 0.0
            for row in range(lq):
                got = [s for s, t in zip(sims[row], token_ids[row]) if t >= 0 and passage_of[t] == p]
                total += max([float(q[row] @ mean), *got])
            expected.append(total)
        for dense_max in (1 << 21, 10):  # per-passage arrays, then sorted hits
            monkeypatch.setattr(FaissBackend, "_DENSE_CANDIDATES_MAX", dense_max)
            backend = FaissBackend(max_rerank=5)
            backend.passage_means = passage_means(store)
            cands, score = backend.approximate_scores(store, q, sims, token_ids)
            np.testing.assert_array_equal(cands, reached)
            np.testing.assert_allclose(score, expected, rtol=1e-3, atol=1e-2)
            kept = backend._candidates(store, q, sims, token_ids, k=3)
            if len(reached) > 5:  # pruned to the 5 best by that score
                assert set(kept.tolist()) == set(np.asarray(reached)[np.argsort(-score, kind="stable")[:5]])


def test_token_passage_lookup_matches_the_per_token_array():
    """The block-table lookup gives every token the passage a [n_tokens] array would: passages much
    longer than a block, one-token passages, many passage starts within one block, the last token."""
    from jmlr_hf.retriever.backends.faiss import TokenPassages

    rng = np.random.default_rng(0)
    cases = [
        rng.integers(1, 400, 3000),
        np.ones(2000, dtype=np.int64),
        rng.integers(1, 3, 5000),
        np.array([1000, 1, 1, 600, 1]),
        np.array([7]),
    ]
    for lengths in cases:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        every = np.arange(int(offsets[-1]))
        reference = np.repeat(np.arange(len(lengths)), lengths)
        lookup = TokenPassages(offsets)
        np.testing.assert_array_equal(lookup(every), reference)
        shuffled = rng.permutation(every)
        np.testing.assert_array_equal(lookup(shuffled), reference[shuffled])
        assert len(lookup.block_first) == -(-int(offsets[-1]) // TokenPassages.BLOCK)  # not one per token


def test_segment_maxsim_blocks_and_padding_match_a_reference(monkeypatch):
    """The rerank's MaxSim in fixed-shape blocks (query rows padded, the last block zero-padded, passages
    across blocks) equals a float64 reference exactly, for short and long queries (values on a grid of
    1/32: every product and sum is exact in bf16 and float32, so any token scored twice or missed shows)."""
    from jmlr_hf.retriever import store as store_module

    monkeypatch.setattr(store_module, "_SEGMENT_BLOCK_TOKENS", 256)  # passages cross many blocks
    rng = np.random.default_rng(0)
    for lq, n_passages in ((3, 5), (40, 300), (170, 40), (2, 1)):
        lengths = rng.integers(1, 600, n_passages)
        vectors = (torch.from_numpy(rng.integers(-2, 3, (int(lengths.sum()), 16))) / 8).to(torch.bfloat16)
        q = torch.from_numpy(rng.integers(-2, 3, (2, lq, 16))).float() / 4
        qmask = torch.ones(2, lq, dtype=torch.bool)
        qmask[1, lq // 2 :] = False
        sims = q.double() @ vectors.double().T  # [2, lq, n_tokens]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        reference = torch.stack([sims[:, :, a:b].amax(2) for a, b in zip(bounds[:-1], bounds[1:])], dim=2)
        reference = (reference * qmask[:, :, None]).sum(1)
        got = store_module.segment_maxsim(q, qmask, vectors, lengths)
        torch.testing.assert_close(got.double(), reference, atol=0, rtol=0)


def test_segment_maxsim_uses_few_matmul_shapes(monkeypatch):
    """Every query length and candidate count maps onto a few matmul shapes (each new shape caches a
    oneDNN kernel on bf16 CPUs: one per query made a search process grow without bound)."""
    from jmlr_hf.retriever import store as store_module

    shapes = set()
    real_matmul = torch.Tensor.__matmul__

    def record(a, b):
        shapes.add((tuple(a.shape), tuple(b.shape)))
        return real_matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", record)
    rng = np.random.default_rng(0)
    for lq in range(60, 200, 7):  # 20 query lengths, 20 candidate sets
        lengths = rng.integers(50, 200, int(rng.integers(100, 400)))
        vectors = torch.zeros(int(lengths.sum()), 8, dtype=torch.bfloat16)
        store_module.segment_maxsim(
            torch.ones(1, lq, 8), torch.ones(1, lq, dtype=torch.bool), vectors, lengths
        )
    assert len(shapes) <= 5, shapes  # row buckets 64, 96, 128, 192, 256; one block length
