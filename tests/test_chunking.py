"""chunk_corpus: windows of at most chunk_tokens that start and end at word boundaries, overlap, and cover
the text; checked on real NGC guideline documents."""

from __future__ import annotations

import pytest

from jmlr_hf.data import chunk_corpus, load_corpus


def _spans(passages, texts):
    """Each passage's character span in its document (passages of a document are in order)."""
    spans, cursor = [], {}
    for doc_id, text in zip(passages["doc_id"], passages["text"]):
        start = texts[doc_id].find(text, cursor.get(doc_id, 0))
        assert start >= 0, f"passage of {doc_id} is not a span of the document"
        cursor[doc_id] = start
        spans.append((doc_id, start, start + len(text)))
    return spans


def _mid_word(doc: str, i: int) -> bool:
    """Whether position ``i`` of ``doc`` falls between two letters/digits of one word."""
    return 0 < i < len(doc) and doc[i - 1].isalnum() and doc[i].isalnum()


def test_chunks_of_real_guidelines_start_and_end_at_word_boundaries_and_cover_the_text(
    bert_tokenizer, ngc_path
):
    docs = load_corpus(ngc_path).select(range(60))
    texts = dict(zip(docs["id"], docs["text"]))
    passages = chunk_corpus(docs, bert_tokenizer, 180, 32)
    spans = _spans(passages, texts)
    assert not [(d, a, b) for d, a, b in spans if _mid_word(texts[d], a) or _mid_word(texts[d], b)]
    lengths = [len(bert_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in passages["text"]]
    assert max(lengths) <= 180 and sum(lengths) / len(lengths) > 170  # windows stay nearly full
    for doc_id, doc in texts.items():
        own = [(a, b) for d, a, b in spans if d == doc_id]
        covered = [False] * len(doc)
        for a, b in own:
            covered[a:b] = [True] * (b - a)
        assert all(c or ch.isspace() for c, ch in zip(covered, doc)), f"{doc_id}: text left out"
        for (_, end), (start, _) in zip(own, own[1:]):  # consecutive windows overlap by >= 32 tokens
            assert len(bert_tokenizer(doc[start:end], add_special_tokens=False)["input_ids"]) >= 32


def test_a_window_never_splits_word_pieces(bert_tokenizer):
    words = {"hypertension", "tachycardia", "cardiomyopathy"}  # 2, 4 and 4 word-pieces (hyper ##tension)
    text = " ".join(sorted(words) * 20)
    passages = chunk_corpus(load_corpus([text]), bert_tokenizer, 7, 2)
    assert len(passages["text"]) > 10
    for passage in passages["text"]:
        assert len(bert_tokenizer(passage, add_special_tokens=False)["input_ids"]) <= 7
        assert set(passage.split()) <= words


def test_a_word_longer_than_the_window_is_the_only_cut(bert_tokenizer):
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"  # more than 4 word-pieces
    passages = chunk_corpus(load_corpus([f"lung {word} disease"]), bert_tokenizer, 4, 1)
    texts = passages["text"]
    assert texts[0] == "lung" and texts[-1].endswith("disease")  # "lung" alone: the next word does not fit
    assert all(t in word for t in texts[1:-1]) and len(texts) >= 17 // 3  # its 17 pieces, 3 new per window


@pytest.mark.parametrize(("tokens", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_bad_window_settings_raise(bert_tokenizer, tokens, overlap):
    with pytest.raises(ValueError, match="chunk_"):
        chunk_corpus(load_corpus(["some text"]), bert_tokenizer, tokens, overlap)
