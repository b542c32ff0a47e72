"""JMLRRetriever: tokenisation conventions, MaxSim against a naive loop, save/load and foreign formats."""

from __future__ import annotations

import json
import string

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel

from jmlr_hf import JMLRRetriever, JMLRRetrieverConfig
from jmlr_hf.retriever import maxsim, maxsim_paired

from conftest import make_tiny_retriever

DOCS = [
    "Thiazide diuretics are first-line therapy for uncomplicated hypertension.",
    "Metformin is the preferred initial drug for type 2 diabetes, unless contraindicated!",
    "Screen adults aged 50 to 75 for colorectal cancer; colonoscopy every 10 years.",
]
QUERIES = ["first-line drug for high blood pressure", "what treats diabetes?"]


def naive_maxsim(q_emb, q_mask, d_emb, d_mask):
    scores = torch.zeros(len(q_emb), len(d_emb))
    for i in range(len(q_emb)):
        for j in range(len(d_emb)):
            total = 0.0
            for a in range(q_emb.shape[1]):
                if not q_mask[i, a]:
                    continue
                best = max(float(q_emb[i, a] @ d_emb[j, b]) for b in range(d_emb.shape[1]) if d_mask[j, b])
                total += best
            scores[i, j] = total
    return scores


def test_query_tokenisation_markers_and_expansion(tiny_retriever, bert_tokenizer):
    inputs = tiny_retriever.tokenize(["short query"], is_query=True)
    ids = inputs["input_ids"][0]
    assert ids.shape[0] == 32
    assert ids[0] == bert_tokenizer.cls_token_id
    assert ids[1] == bert_tokenizer.convert_tokens_to_ids("[unused0]")
    # padded with [MASK] (query expansion); the encoder does not attend to them, MaxSim uses them
    n_real = len(bert_tokenizer("short query")["input_ids"]) + 1
    assert (ids[n_real:] == bert_tokenizer.mask_token_id).all()
    assert inputs["attention_mask"][0, :n_real].all() and not inputs["attention_mask"][0, n_real:].any()
    assert inputs["output_mask"].all()


LONG_QUESTION = (
    "A 67-year-old man with a history of hypertension and type 2 diabetes presents to the emergency "
    "department with crushing substernal chest pain radiating to the left arm for two hours. He is "
    "diaphoretic; blood pressure is 150/95 mm Hg and pulse 104/min. An ECG shows ST elevation in leads "
    "II, III and aVF. Troponin is elevated. Which of the following is the most appropriate next step "
    "in management of this patient?"
)


def test_long_query_reaches_the_retriever_whole(tiny_retriever, bert_tokenizer):
    """A MedQA-length vignette is not cut to query_length: the actual question at its end is encoded."""
    full = bert_tokenizer(LONG_QUESTION)["input_ids"]
    assert len(full) > 64
    inputs = tiny_retriever.tokenize([LONG_QUESTION, "short query"], is_query=True)
    ids = inputs["input_ids"][0]
    assert ids.shape[0] == len(full) + 1  # [CLS] [Q] ... [SEP]: every word-piece plus the marker
    assert ids[2:].tolist() == full[1:]
    assert inputs["output_mask"][0].all() and inputs["attention_mask"][0].all()
    # the short query of the same batch: expanded with [MASK] to query_length, then real padding
    short_len = 32
    assert inputs["output_mask"][1].sum() == short_len
    assert (inputs["input_ids"][1, short_len:] == bert_tokenizer.pad_token_id).all()
    assert not inputs["attention_mask"][1, short_len:].any()


def test_query_vectors_do_not_depend_on_the_batch(tiny_retriever):
    alone = tiny_retriever.encode_queries(["short query"], precision="fp32")
    batched = tiny_retriever.encode_queries(["short query", LONG_QUESTION], precision="fp32")
    n = alone.embeddings.shape[1]
    assert alone.mask.sum() == batched.mask[0].sum() == n == 32
    torch.testing.assert_close(batched.embeddings[0, :n], alone.embeddings[0], rtol=1e-4, atol=1e-5)
    assert not batched.mask[0, n:].any()
    docs = tiny_retriever.encode_documents(DOCS, precision="fp32")
    torch.testing.assert_close(
        tiny_retriever.score(batched, docs)[0], tiny_retriever.score(alone, docs)[0], rtol=1e-4, atol=1e-5
    )


def test_query_max_length_caps_long_queries(bert_tokenizer):
    capped = make_tiny_retriever(bert_tokenizer, query_max_length=40)
    assert capped.tokenize([LONG_QUESTION], is_query=True)["input_ids"].shape[1] == 40
    # None means the encoder's limit (the tiny encoder has 256 positions)
    assert make_tiny_retriever(bert_tokenizer).config.max_query_tokens == 256
    with pytest.raises(ValueError, match="query_max_length"):
        make_tiny_retriever(bert_tokenizer, query_max_length=2)


def test_document_tokenisation_skiplist_and_truncation(tiny_retriever, bert_tokenizer):
    inputs = tiny_retriever.tokenize(["Hello, world! " * 200, "ok."], is_query=False)
    assert inputs["input_ids"].shape[1] == 180  # document_length
    assert inputs["input_ids"][0, 1] == bert_tokenizer.convert_tokens_to_ids("[unused1]")
    punct = {bert_tokenizer.convert_tokens_to_ids(c) for c in ",!."}
    for row in range(2):
        for pos in range(inputs["input_ids"].shape[1]):
            tid = int(inputs["input_ids"][row, pos])
            expected = bool(inputs["attention_mask"][row, pos]) and tid not in punct
            assert bool(inputs["output_mask"][row, pos]) == expected


def test_embeddings_are_normalised_and_masked(tiny_retriever):
    docs = tiny_retriever.encode_documents(DOCS, precision="fp32")
    norms = docs.embeddings.norm(dim=-1)
    assert torch.allclose(norms[docs.mask], torch.ones(int(docs.mask.sum())), atol=1e-5)
    assert (norms[~docs.mask] == 0).all()
    assert docs.embeddings.shape[-1] == 16


def test_maxsim_matches_naive_loop(tiny_retriever):
    q = tiny_retriever.encode_queries(QUERIES, precision="fp32")
    d = tiny_retriever.encode_documents(DOCS, precision="fp32")
    fast = tiny_retriever.score(q, d)
    slow = naive_maxsim(q.embeddings, q.mask, d.embeddings, d.mask)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    # chunking over documents does not change the result
    torch.testing.assert_close(maxsim(*q, *d, doc_chunk_size=1), fast)
    # the paired form (each query against its own documents) agrees with the full matrix
    paired = maxsim_paired(
        q.embeddings, q.mask, d.embeddings[None].expand(2, -1, -1, -1), d.mask[None].expand(2, -1, -1)
    )
    torch.testing.assert_close(paired, fast, rtol=1e-5, atol=1e-5)


def test_encoding_order_and_batching_do_not_change_vectors(tiny_retriever):
    full = tiny_retriever.encode_documents(DOCS, batch_size=8, precision="fp32")
    single = [tiny_retriever.encode_documents([t], precision="fp32") for t in DOCS]
    for i, one in enumerate(single):
        n = one.embeddings.shape[1]
        torch.testing.assert_close(full.embeddings[i, :n], one.embeddings[0], rtol=1e-4, atol=1e-5)
    flat, lens = tiny_retriever.encode_documents_flat(DOCS, precision="fp32")
    assert lens.tolist() == full.mask.sum(1).tolist()
    torch.testing.assert_close(flat[: lens[0]], full.embeddings[0][full.mask[0]])


def test_embed_has_gradients(tiny_retriever):
    tiny_retriever.train()
    q = tiny_retriever.embed(QUERIES, is_query=True)
    d = tiny_retriever.embed(DOCS, is_query=False)
    maxsim(q.embeddings, q.mask, d.embeddings, d.mask).sum().backward()
    assert tiny_retriever.linear.weight.grad is not None and tiny_retriever.linear.weight.grad.abs().sum() > 0


def test_save_load_roundtrip_with_tokenizer_and_automodel(tiny_retriever, tmp_path):
    tiny_retriever.save_pretrained(tmp_path / "r")
    assert (tmp_path / "r" / "model.safetensors").is_file() and (tmp_path / "r" / "tokenizer.json").is_file()
    for loader in (JMLRRetriever.from_pretrained, AutoModel.from_pretrained):
        loaded = loader(tmp_path / "r")
        assert isinstance(loaded, JMLRRetriever) and loaded.tokenizer is not None
        for name, tensor in tiny_retriever.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
        q = loaded.encode_queries(QUERIES, precision="fp32")
        torch.testing.assert_close(
            q.embeddings, tiny_retriever.encode_queries(QUERIES, precision="fp32").embeddings
        )
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "r"), JMLRRetrieverConfig)


def test_from_encoder_loads_pretrained_encoder_weights(encoder_path):
    from safetensors.torch import load_file

    retriever = JMLRRetriever.from_encoder(encoder_path, dim=32)
    assert retriever.config.dim == 32 and retriever.linear.weight.shape == (32, 384)
    reference = load_file(encoder_path / "model.safetensors")
    key = next(k for k in reference if k.endswith("embeddings.word_embeddings.weight"))
    torch.testing.assert_close(retriever.encoder.embeddings.word_embeddings.weight, reference[key])


def _write_stanford_checkpoint(retriever: JMLRRetriever, folder, prefix: str = "bert.") -> None:
    folder.mkdir()
    retriever.config.encoder_config.save_pretrained(folder)
    state = {prefix + k: v.contiguous() for k, v in retriever.encoder.state_dict().items()}
    state["linear.weight"] = retriever.linear.weight.detach().contiguous()
    save_file(state, str(folder / "model.safetensors"))
    retriever.tokenizer.save_pretrained(folder)
    meta = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_maxlen": 24,
        "doc_maxlen": 100,
        "dim": retriever.config.dim,
        "similarity": "cosine",
        "attend_to_mask_tokens": False,
        "mask_punctuation": True,
    }
    (folder / "artifact.metadata").write_text(json.dumps(meta))


def test_loads_stanford_colbert_checkpoint(bert_tokenizer, tmp_path):
    source = make_tiny_retriever(bert_tokenizer, query_length=24, document_length=100)
    _write_stanford_checkpoint(source, tmp_path / "colbert")
    loaded = JMLRRetriever.from_pretrained(tmp_path / "colbert")
    assert loaded.config.query_length == 24 and loaded.config.document_length == 100
    assert loaded.config.query_max_length == 24  # ColBERT's query_maxlen stays exact
    assert loaded.tokenize([LONG_QUESTION], is_query=True)["input_ids"].shape[1] == 24
    assert loaded.config.skiplist == list(string.punctuation)
    q, d = loaded.encode_queries(QUERIES, precision="fp32"), loaded.encode_documents(DOCS, precision="fp32")
    expected = source.score(
        source.encode_queries(QUERIES, precision="fp32"), source.encode_documents(DOCS, precision="fp32")
    )
    torch.testing.assert_close(loaded.score(q, d), expected)


def test_loads_pylate_colbert_folder(bert_tokenizer, tmp_path):
    source = make_tiny_retriever(bert_tokenizer, query_marker="[Q] ", document_marker="[D] ")
    source._ensure_marker_tokens()  # PyLate adds "[Q] "/"[D] " to the vocabulary
    folder = tmp_path / "pylate"
    folder.mkdir()
    source.encoder.save_pretrained(folder)
    source.tokenizer.save_pretrained(folder)
    (folder / "1_Dense").mkdir()
    save_file(
        {"linear.weight": source.linear.weight.detach().contiguous()},
        str(folder / "1_Dense" / "model.safetensors"),
    )
    (folder / "1_Dense" / "config.json").write_text(
        json.dumps(
            {
                "in_features": 32,
                "out_features": 16,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
            ]
        )
    )
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "query_prefix": "[Q] ",
                "document_prefix": "[D] ",
                "query_length": 32,
                "document_length": 180,
                "attend_to_expansion_tokens": False,
                "skiplist_words": list(string.punctuation),
            }
        )
    )
    loaded = JMLRRetriever.from_pretrained(folder)
    assert loaded.config.query_marker == "[Q] "
    expected = source.score(
        source.encode_queries(QUERIES, precision="fp32"), source.encode_documents(DOCS, precision="fp32")
    )
    got = loaded.score(
        loaded.encode_queries(QUERIES, precision="fp32"), loaded.encode_documents(DOCS, precision="fp32")
    )
    torch.testing.assert_close(got, expected)


def test_empty_markers_mean_no_marker(bert_tokenizer):
    """PyLate's empty prefixes: nothing is inserted after [CLS] and the text keeps the marker's place."""
    retriever = make_tiny_retriever(bert_tokenizer, query_marker="", document_marker="", document_length=8)
    retriever._ensure_marker_tokens()  # adds nothing for an empty marker
    assert len(retriever.tokenizer) == len(bert_tokenizer)
    plain = bert_tokenizer("short query")["input_ids"]
    ids = retriever.tokenize(["short query"], is_query=True)["input_ids"][0]
    assert ids[: len(plain)].tolist() == plain and (ids[len(plain) :] == bert_tokenizer.mask_token_id).all()
    doc = retriever.tokenize(["one two three four five six seven eight nine"], is_query=False)["input_ids"][0]
    assert (
        doc.tolist()
        == bert_tokenizer("one two three four five six seven eight nine", max_length=8, truncation=True)[
            "input_ids"
        ]
    )


def test_skiplist_keeps_the_first_piece_of_words_split_into_pieces(bert_tokenizer):
    """A skiplist word that is a vocabulary token drops that token (PyLate); one that the tokenizer splits
    drops its first piece (Stanford ColBERT), instead of being ignored."""
    retriever = make_tiny_retriever(bert_tokenizer, skiplist=["!", "e.g.", "--"])
    assert len(bert_tokenizer.encode("e.g.", add_special_tokens=False)) == 4
    expected = sorted(bert_tokenizer.convert_tokens_to_ids(t) for t in ("!", "e", "-"))
    assert retriever._skiplist().tolist() == expected


def test_projection_layers_chain(bert_tokenizer, tmp_path):
    layers = [
        {"out_features": 24, "bias": True, "activation": "Tanh", "residual": True},
        {
            "out_features": 24,
            "bias": False,
            "activation": "torch.nn.modules.activation.GELU",
            "residual": True,
        },
        {"out_features": 16, "bias": False, "activation": "Identity", "residual": False},
    ]
    retriever = make_tiny_retriever(bert_tokenizer, projection_layers=layers)
    hidden = torch.randn(2, 5, 32)
    x = torch.tanh(retriever.linear(hidden)) + retriever.residual_projections["0"](hidden)
    x = F.gelu(retriever.extra_projections[0](x)) + x
    torch.testing.assert_close(retriever._project(hidden), retriever.extra_projections[1](x))
    retriever.save_pretrained(tmp_path / "r")
    loaded = JMLRRetriever.from_pretrained(tmp_path / "r")
    for name, tensor in retriever.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out_features == dim"):
        make_tiny_retriever(bert_tokenizer, dim=8, projection_layers=layers)
    with pytest.raises(ValueError, match="Unsupported projection activation"):
        make_tiny_retriever(
            bert_tokenizer, projection_layers=[{"out_features": 16, "activation": "os.system"}]
        )


def test_bad_inputs(tiny_retriever, encoder_path, tmp_path):
    with pytest.raises(TypeError, match="single string"):
        tiny_retriever.encode_queries("not a list")
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        tiny_retriever.encode_documents(["ok", 3])
    with pytest.raises(ValueError, match="from_encoder"):
        JMLRRetriever.from_pretrained(encoder_path)
    with pytest.raises(OSError, match="config.json"):
        JMLRRetriever.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dim"):
        JMLRRetrieverConfig(dim=0)
    bare = JMLRRetriever(tiny_retriever.config)
    with pytest.raises(ValueError, match="no tokenizer"):
        bare.encode_queries(["q"])


def test_auto_precision_encodes_queries_in_float32_on_cpu(tiny_retriever, monkeypatch):
    """On a CPU with fast bf16, ``"auto"`` keeps bf16 for passages but encodes queries in float32
    (as fast for a query, and no oneDNN kernel cached per query length: a search process stops growing)."""
    import jmlr_hf.retriever.modeling_jmlr_retriever as modeling

    monkeypatch.setattr(modeling, "bf16_supported", lambda device: True)  # as on AVX-512 BF16 / AMX CPUs
    texts = ["first-line therapy for hypertension in pregnancy", "sepsis fluids"]
    auto = tiny_retriever.encode_queries(texts)
    assert torch.equal(auto.embeddings, tiny_retriever.encode_queries(texts, precision="fp32").embeddings)
    assert not torch.equal(auto.embeddings, tiny_retriever.encode_queries(texts, precision="bf16").embeddings)
    docs_auto = tiny_retriever.encode_documents(texts).embeddings
    assert torch.equal(docs_auto, tiny_retriever.encode_documents(texts, precision="bf16").embeddings)
    assert not torch.equal(docs_auto, tiny_retriever.encode_documents(texts, precision="fp32").embeddings)
