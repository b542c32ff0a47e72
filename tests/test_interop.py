"""Folders written by the REAL PyLate and Stanford ColBERT libraries load and give their vectors.

The fixtures under tests/fixtures/ were written once by tests/fixtures/make_interop_fixtures.py in
separate virtualenvs with the real libraries (versions in tests/fixtures/versions.json); this suite
only reads them and needs neither library. Each ``<name>.embeddings.safetensors`` holds the library's
own fp32 vectors for the texts of ``texts.json``: the vectors it keeps per text, in order, and the
token ids they belong to.
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from jmlr_hf import JMLRRetriever

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 5e-6
FOLDERS = ["pylate_colbert", "pylate_colbert_no_prefix", "stanford_colbert", "stanford_colbert_metaspace"]


def _fixture(name: str) -> Path:
    folder = FIXTURES / name
    if not folder.is_dir() or not (FIXTURES / f"{name}.embeddings.safetensors").is_file():
        pytest.skip(f"fixture {name} is absent: run tests/fixtures/make_interop_fixtures.py")
    return folder


def _texts() -> dict[str, list[str]]:
    return json.loads((FIXTURES / "texts.json").read_text(encoding="utf-8"))


def _reference(name: str, kind: str, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    ref = load_file(str(FIXTURES / f"{name}.embeddings.safetensors"))
    return [ref[f"{kind}.{i}"] for i in range(n)], [ref[f"{kind}_ids.{i}"] for i in range(n)]


def _ours(retriever: JMLRRetriever, texts: list[str], is_query: bool):
    """Per text: the kept vectors and the token ids they belong to, in fp32 (the exact mode)."""
    encode = retriever.encode_queries if is_query else retriever.encode_documents
    out = encode(texts, precision="fp32", batch_size=2)
    ids = retriever.tokenize(texts, is_query=is_query)
    vectors, kept_ids = [], []
    for i in range(len(texts)):
        n = int(out.mask[i].sum())
        vectors.append(out.embeddings[i][out.mask[i]])
        kept_ids.append(ids["input_ids"][i][ids["output_mask"][i]])
        assert kept_ids[-1].shape[0] == n
    return vectors, kept_ids


def _max_abs_diff(retriever: JMLRRetriever, name: str) -> float:
    texts = _texts()
    worst = 0.0
    for kind, key, is_query in (("query", "queries", True), ("document", "documents", False)):
        ref_vecs, ref_ids = _reference(name, kind, len(texts[key]))
        vecs, ids = _ours(retriever, texts[key], is_query)
        for i, (v, t, rv, rt) in enumerate(zip(vecs, ids, ref_vecs, ref_ids)):
            tokens = retriever.tokenizer.convert_ids_to_tokens(rt.tolist())
            assert t.tolist() == rt.tolist(), (
                f"{name} {kind} {i}: token ids differ from the library's {tokens}"
            )
            where = f"{name} {kind} {i}"
            torch.testing.assert_close(v, rv, rtol=0, atol=ATOL, msg=lambda m, where=where: f"{where}: {m}")
            worst = max(worst, float((v - rv).abs().max()))
    return worst


@pytest.mark.parametrize("name", FOLDERS)
def test_real_library_folder_gives_the_library_vectors(name):
    retriever = JMLRRetriever.from_pretrained(_fixture(name))
    worst = _max_abs_diff(retriever, name)
    print(f"{name}: max |ours - library| = {worst:.2e}")
    # MaxSim scores from the library's own vectors agree too
    texts = _texts()
    q = retriever.encode_queries(texts["queries"], precision="fp32")
    d = retriever.encode_documents(texts["documents"], precision="fp32")
    ref_q, _ = _reference(name, "query", len(texts["queries"]))
    ref_d, _ = _reference(name, "document", len(texts["documents"]))
    expected = torch.tensor([[float((qv @ dv.T).max(1).values.sum()) for dv in ref_d] for qv in ref_q])
    torch.testing.assert_close(retriever.score(q, d), expected, rtol=0, atol=1e-4)


def test_pylate_folder_saved_by_transformers_5_3_uses_legacy_layernorm_names():
    """transformers 5.3 writes BERT LayerNorm weights as LayerNorm.gamma/beta: they load all the same."""
    folder = _fixture("pylate_colbert")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.endswith("LayerNorm.gamma") for k in keys) and not any(
        k.endswith("LayerNorm.weight") for k in keys
    )
    retriever = JMLRRetriever.from_pretrained(folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        gamma = f.get_tensor("embeddings.LayerNorm.gamma")
    torch.testing.assert_close(retriever.encoder.embeddings.LayerNorm.weight, gamma, rtol=0, atol=0)
    assert retriever.config.query_marker == "[Q] " and retriever.config.document_marker == "[D] "
    assert retriever.config.projection_layers is None  # one bias-free Dense: the plain `linear`


def test_pylate_empty_prefixes_mean_no_marker_and_the_dense_chain_round_trips(tmp_path):
    folder = _fixture("pylate_colbert_no_prefix")
    retriever = JMLRRetriever.from_pretrained(folder)
    cfg = retriever.config
    assert cfg.query_marker == "" and cfg.document_marker == ""
    tok = retriever.tokenizer
    ids = retriever.tokenize(["what treats diabetes?"], is_query=True)["input_ids"][0]
    assert ids[0] == tok.cls_token_id and tok.convert_ids_to_tokens(int(ids[1])) == "what"
    assert ids.shape[0] == cfg.query_length == 24
    assert [layer["activation"] for layer in cfg.projection_layers] == ["Tanh", "GELU", "Identity"]
    assert [layer["residual"] for layer in cfg.projection_layers] == [True, True, False]
    # PyLate's skiplist is convert_tokens_to_ids(word): "e.g." is no vocabulary token, so PyLate drops [UNK]
    # tokens (the emoji of the third document); "..." is one, though the tokenizer never produces it
    assert "[UNK]" in cfg.skiplist and "e.g." not in cfg.skiplist and "..." in cfg.skiplist
    # the chain is part of the model: save_pretrained / from_pretrained keep it
    retriever.save_pretrained(tmp_path / "r")
    again = JMLRRetriever.from_pretrained(tmp_path / "r")
    assert again.config.projection_layers == cfg.projection_layers
    texts = _texts()["documents"]
    torch.testing.assert_close(
        again.encode_documents(texts, precision="fp32").embeddings,
        retriever.encode_documents(texts, precision="fp32").embeddings,
        rtol=0,
        atol=0,
    )


def test_stanford_skiplist_keeps_the_first_piece_of_split_punctuation():
    """With a SentencePiece-like tokenizer "," is split into "▁" + ",": ColBERT skips "▁" (its first piece)."""
    retriever = JMLRRetriever.from_pretrained(_fixture("stanford_colbert_metaspace"))
    tok = retriever.tokenizer
    assert tok.convert_ids_to_tokens(tok.encode(",", add_special_tokens=False)) == ["\u2581", ","]
    assert retriever.config.skiplist == ["\u2581"]
    assert retriever._skiplist().tolist() == [tok.convert_tokens_to_ids("\u2581")]
    plain = JMLRRetriever.from_pretrained(_fixture("stanford_colbert"))
    assert plain.config.skiplist == list(string.punctuation)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            {"activation_function": "torch.nn.modules.activation.Threshold"},
            "cannot be built without arguments",
        ),
        ({"activation_function": "mypackage.Swish"}, "Unsupported projection activation"),
        ({"in_features": 31}, "in_features"),
    ],
)
def test_unsupported_pylate_dense_layers_raise_clear_errors(tmp_path, edit, match):
    folder = tmp_path / "copy"
    shutil.copytree(_fixture("pylate_colbert_no_prefix"), folder)
    config_file = folder / "1_Dense" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **edit}))
    with pytest.raises(ValueError, match=match):
        JMLRRetriever.from_pretrained(folder)


def test_unsupported_pylate_module_raises_a_clear_error(tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(_fixture("pylate_colbert"), folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append(
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Normalize"):
        JMLRRetriever.from_pretrained(folder)


def test_document_index_takes_the_exact_mode_in_one_argument(monkeypatch):
    """``DocumentIndex.build(..., precision="fp32")`` encodes passages and, by default, queries exactly."""
    from jmlr_hf import DocumentIndex

    retriever = JMLRRetriever.from_pretrained(_fixture("stanford_colbert"))
    seen = []
    for method in ("encode_queries", "encode_documents_flat"):
        original = getattr(retriever, method)

        def record(*args, _original=original, **kwargs):
            seen.append(kwargs.get("precision"))
            return _original(*args, **kwargs)

        monkeypatch.setattr(retriever, method, record)
    texts = _texts()
    index = DocumentIndex.build(texts["documents"][:3], retriever, backend="exact", precision="fp32")
    hits = index.search(texts["queries"], k=3)
    assert seen == ["fp32", "fp32"] and index.precision == "fp32"
    exact = retriever.score(
        retriever.encode_queries(texts["queries"], precision="fp32"),
        retriever.encode_documents(texts["documents"][:3], precision="fp32"),
    )
    for row, query_hits in enumerate(hits):
        for hit in query_hits:  # the index stores bf16 vectors: scores agree to bf16 rounding
            assert abs(hit["score"] - float(exact[row, int(hit["doc_id"].split("-")[-1])])) < 0.05
    index.search(texts["queries"][:1], k=1, precision="bf16")
    assert seen[-1] == "bf16" and index.precision == "fp32"
    index.refresh(precision="auto")
    assert seen[-1] == "auto" and index.precision == "auto"
