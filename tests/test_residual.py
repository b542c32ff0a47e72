"""ResidualCodec / ResidualStore (ColBERTv2-style residual compression): against a reference written in plain
loops, bit packing, persistence, memory-mapped inputs, and ranking quality on real ColBERT vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jmlr_hf.retriever.residual import (
    ResidualCodec,
    ResidualStore,
    default_n_centroids,
    pack_buckets,
    unpack_buckets,
)
from jmlr_hf.retriever.store import TokenStore, segment_maxsim


def _unit(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=-1)


def _reference(codec: ResidualCodec, v: np.ndarray) -> tuple[int, list[int], bytes, np.ndarray]:
    """One vector, the slow way: nearest centroid by a loop, each dimension's bucket by counting its cutoffs
    (of the unit-norm residual when scaled), bits packed by hand (dimension d's bits at d*nbits.., LSB first;
    bytes big-endian), then the float16 least-squares scale (little-endian), reconstruction."""
    centroids, nbits, dim = codec.centroids, codec.nbits, len(v)
    cutoffs = [codec.bucket_cutoffs[d] if codec.per_dim else codec.bucket_cutoffs for d in range(dim)]
    weights = [codec.bucket_weights[d] if codec.per_dim else codec.bucket_weights for d in range(dim)]
    best, best_sim = 0, -np.inf
    for c in range(len(centroids)):
        sim = float(np.dot(centroids[c], v))
        if sim > best_sim:
            best, best_sim = c, sim
    residual = (v - centroids[best]).astype(np.float64)
    norm = float(np.sqrt(sum(r * r for r in residual)))
    values = [r / norm for r in residual] if codec.scaled else list(residual)
    buckets = [sum(1 for cut in cutoffs[d] if cut < values[d]) for d in range(dim)]
    bits = []
    for b in buckets:
        bits.extend((b >> i) & 1 for i in range(nbits))
    packed = bytes(
        sum(bit << (7 - j) for j, bit in enumerate(bits[k : k + 8])) for k in range(0, len(bits), 8)
    )
    w = [float(weights[d][buckets[d]]) for d in range(dim)]
    scale = 1.0
    if codec.scaled:
        scale = float(np.float16(sum(r * x for r, x in zip(residual, w)) / sum(x * x for x in w)))
        packed += np.array([scale], dtype="<f2").tobytes()
    recon = np.array([centroids[best][d] + scale * w[d] for d in range(dim)], dtype=np.float64)
    return best, buckets, packed, recon / np.linalg.norm(recon)


@pytest.mark.parametrize("per_dim, scaled", [(False, False), (True, False), (True, True), (False, True)])
@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_codec_matches_loop_reference(nbits, per_dim, scaled):
    x = _unit(3000, 32)
    codec = ResidualCodec.fit(x, n_centroids=32, nbits=nbits, seed=0, per_dim=per_dim, scaled=scaled)
    assert codec.per_dim == per_dim and codec.scaled == scaled
    shape = (32, 2**nbits - 1) if per_dim else (2**nbits - 1,)
    assert codec.bucket_cutoffs.shape == shape and np.all(np.diff(codec.bucket_cutoffs, axis=-1) > 0)
    row = 32 * nbits // 8 + 2 * scaled
    assert codec.bytes_per_token(32) == 2 + row
    sample = x[:7].numpy()
    codes, packed = codec.compress(sample)
    assert codes.dtype == np.uint16 and packed.shape == (7, row) and packed.dtype == np.uint8
    out = codec.decompress(codes, packed)
    assert out.dtype == torch.bfloat16 and out.shape == (7, 32)
    for i, v in enumerate(sample):
        code, buckets, ref_packed, recon = _reference(codec, v)
        assert int(codes[i]) == code
        assert unpack_buckets(packed[i : i + 1, : 32 * nbits // 8], nbits)[0].tolist() == buckets
        assert packed[i].tobytes() == ref_packed
        torch.testing.assert_close(out[i].float(), torch.from_numpy(recon).float(), atol=8e-3, rtol=0)


def test_bucket_weights_are_bucket_means_and_cutoffs_quantiles():
    x = _unit(4000, 16, seed=1)
    codec = ResidualCodec.fit(x, n_centroids=16, nbits=2, per_dim=False, scaled=False)
    residual = (x.numpy() - codec.centroids[codec.assign(x)]).reshape(-1)
    np.testing.assert_allclose(
        codec.bucket_cutoffs, np.quantile(residual, [0.25, 0.5, 0.75]), rtol=1e-5, atol=1e-6
    )
    bucket = np.searchsorted(codec.bucket_cutoffs, residual, side="left")
    means = [residual[bucket == b].mean() for b in range(4)]
    np.testing.assert_allclose(codec.bucket_weights, means, rtol=1e-4, atol=1e-6)
    # the default: per dimension, of the unit-norm residuals
    codec = ResidualCodec.fit(x, n_centroids=16, nbits=2)
    unit = x.numpy() - codec.centroids[codec.assign(x)]
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    for d in (0, 9):
        np.testing.assert_allclose(
            codec.bucket_cutoffs[d], np.quantile(unit[:, d], [0.25, 0.5, 0.75]), rtol=1e-5, atol=1e-6
        )
        bucket = np.searchsorted(codec.bucket_cutoffs[d], unit[:, d], side="left")
        means = [unit[bucket == b, d].mean() for b in range(4)]
        np.testing.assert_allclose(codec.bucket_weights[d], means, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_pack_roundtrip(nbits):
    rng = np.random.default_rng(nbits)
    buckets = rng.integers(0, 2**nbits, size=(50, 128)).astype(np.uint8)
    packed = pack_buckets(buckets, nbits)
    assert packed.shape == (50, 128 * nbits // 8)
    np.testing.assert_array_equal(unpack_buckets(packed, nbits), buckets)


def test_default_centroids_and_code_dtype():
    assert default_n_centroids(6_570_409) == 2**15  # 16 * sqrt = 41,012
    assert default_n_centroids(26_281_636) == 2**16
    big = ResidualCodec(np.zeros((70_000, 8), dtype=np.float32), [0.0], [-0.1, 0.1], 1)
    assert big.code_dtype == np.int32 and big.bytes_per_token(128) == 4 + 16
    with pytest.raises(ValueError, match="nbits"):
        ResidualCodec(np.eye(8, dtype=np.float32), [0.0, 0.1], [0.0, 0.1, 0.2], 3)


def test_compress_in_blocks_memmap_input_and_ivf_assignment(tmp_path):
    x = _unit(6000, 32, seed=2)
    bits = tmp_path / "vectors.npy"
    np.save(bits, x.numpy())
    mapped = np.load(bits, mmap_mode="r")  # read-only
    codec = ResidualCodec.fit(x, n_centroids=64, nbits=2)
    codes, packed = codec.compress(mapped, block_tokens=1000)
    codes_t, packed_t = codec.compress(x.bfloat16())  # bf16 tensor, one block
    agree = (codes == codes_t).mean()  # bf16 rounding may move a token to a near-tie centroid
    assert agree > 0.99
    same = codes == codes_t
    np.testing.assert_array_equal(codes[:1000][same[:1000]], codes_t[:1000][same[:1000]])
    # more centroids than EXACT_ASSIGN_MAX_CENTROIDS: assignment through an IVF over the centroids
    wide = ResidualCodec(_unit(8192, 32, seed=3).numpy(), codec.bucket_cutoffs, codec.bucket_weights, 2)
    approx = wide.assign(x[:500])
    sims = x[:500].numpy() @ wide.centroids.T
    # uniform random centroids are IVF's worst case; the centroid found is still nearly the nearest
    assert (approx == sims.argmax(1)).mean() > 0.5
    assert sims[np.arange(500), approx.astype(np.int64)].mean() > 0.97 * sims.max(1).mean()


def test_store_save_load_roundtrip(tmp_path):
    x = _unit(2000, 32, seed=4)
    doclens = np.array([5, 300, 1, 694, 1000])
    store = ResidualStore.from_vectors(x, doclens, n_centroids=32, nbits=2, sample_tokens=1500)
    assert isinstance(store, TokenStore)
    assert store.num_passages == 5 and store.num_tokens == 2000 and store.dim == 32
    assert store.bytes_per_token == 2 + 8 + 2  # id, 2-bit residual, float16 scale
    params = store.save(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(ResidualStore.FILES)
    json.dumps(params)
    loaded = ResidualStore.load(tmp_path / "s", params)
    assert isinstance(loaded.codes, np.memmap) and not loaded.codes.flags.writeable
    np.testing.assert_array_equal(loaded.codes, store.codes)
    np.testing.assert_array_equal(loaded.residuals, store.residuals)
    np.testing.assert_array_equal(loaded.doclens, store.doclens)
    for key, value in store.codec.state_dict().items():
        torch.testing.assert_close(loaded.codec.state_dict()[key], value, rtol=0, atol=0)
    # reads: ranges, scattered tokens, passages
    full = store.codec.decompress(store.codes, store.residuals)
    assert torch.equal(loaded.token_range(10, 400), full[10:400])
    index = np.array([1999, 0, 7, 7, 1500])
    assert torch.equal(loaded.take_tokens(index), full[torch.from_numpy(index)])
    vectors, lengths = loaded.gather(np.array([3, 0]))
    assert lengths.tolist() == [694, 5] and torch.equal(vectors[694:], full[:5])
    assert torch.equal(loaded.passage_slice(1, 3), full[5:306])
    # saving a mapped store into its own folder keeps the files; a mismatching config is refused
    assert loaded.save(tmp_path / "s") == params
    with pytest.raises(ValueError, match="num_tokens"):
        ResidualStore.load(tmp_path / "s", {**params, "num_tokens": 1})


def test_store_compressed_straight_to_mapped_files(tmp_path):
    x = _unit(3000, 32, seed=5)
    np.save(tmp_path / "v.npy", x.numpy())
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    codec = ResidualCodec.fit(x[:2000], n_centroids=16, nbits=4)
    store = ResidualStore.from_vectors(mapped, np.full(30, 100), codec=codec, folder=tmp_path / "out")
    assert isinstance(store.residuals, np.memmap)
    codes, packed = codec.compress(x)
    np.testing.assert_array_equal(store.codes, codes)
    np.testing.assert_array_equal(store.residuals, packed)


def _recall(found: torch.Tensor, ref: torch.Tensor) -> float:
    return float(np.mean([len(set(f) & set(r)) / len(r) for f, r in zip(found.tolist(), ref.tolist())]))


def test_ranking_on_real_colbert_vectors(ngc_path, shared_data):
    """~200 real NGC passages encoded by the default retriever: 2-bit residuals keep the MaxSim ranking."""
    from jmlr_hf.data import chunk_corpus, load_corpus, passage_text_for_encoding
    from jmlr_hf.models import load_default_retriever

    torch.manual_seed(0)
    retriever = load_default_retriever().eval()
    docs = load_corpus(ngc_path)
    passages = chunk_corpus(docs.select(range(30)), retriever.tokenizer, 150, 32)
    texts = [passage_text_for_encoding(t, x) for t, x in zip(passages["title"], passages["text"])][:200]
    assert len(texts) >= 150
    vectors, doclens = retriever.encode_documents_flat(texts, dtype=torch.bfloat16, show_progress_bar=False)
    medqa = json.loads((shared_data / "mirage" / "benchmark.json").read_text(encoding="utf-8"))["medqa"]
    questions = [medqa[qid]["question"] for qid in sorted(medqa)[:8]]
    q = retriever.encode_queries(questions, show_progress_bar=False)

    store = ResidualStore.from_vectors(vectors, doclens, nbits=2, n_centroids=1024)
    assert store.bytes_per_token == 36
    approx = store.token_range(0, store.num_tokens)
    cosine = (approx.float() * vectors.float()).sum(1)
    assert cosine.mean() > 0.9, cosine.mean()
    exact = segment_maxsim(q.embeddings, q.mask, vectors, doclens.numpy())
    compressed = segment_maxsim(q.embeddings, q.mask, approx, doclens.numpy())
    recall = _recall(compressed.topk(10).indices, exact.topk(10).indices)
    # what is lost is among near-ties: the compressed top 10 stay within the exact top 20
    within = _recall(exact.topk(20).indices, compressed.topk(10).indices)
    assert recall >= 0.85 and within >= 0.95, (recall, within)
