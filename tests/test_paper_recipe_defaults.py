"""The defaults fit the paper's recipe without edits: full-length questions, the retriever's own learning
rate, a refreshed index, Atlas's pdist temperatures, and a context budget that holds 7 passages."""

from __future__ import annotations

import pytest

from jmlr_hf import DocumentIndex, JMLRTrainer, JMLRTrainingArguments
from jmlr_hf.data import chunk_corpus, load_corpus, make_demo_task
from jmlr_hf.prompting import PromptBuilder
from testing_utils import make_tiny_llm, make_tiny_retriever

LONG_QUESTION = (
    "A 45-year-old woman presents with fatigue, weight gain and cold intolerance for six months. Her "
    "menstrual periods have become heavier. On examination her skin is dry and her reflexes show a delayed "
    "relaxation phase. Laboratory studies show an elevated TSH and a low free T4, and antibodies against "
    "thyroid peroxidase are present. Which of the following is the most appropriate treatment?"
)


def test_argument_defaults_are_the_papers(tmp_path):
    args = JMLRTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert (args.num_candidate_docs, args.num_scored_docs, args.num_context_docs) == (30, 10, 7)
    assert args.retriever_learning_rate == 1e-5  # not the LLM's (LoRA) rate
    assert args.index_refresh_steps > 0  # never refreshing is the reference code's pitfall
    assert args.retriever_query_max_length == 512  # the paper's query_maxlen
    assert args.utility_temperature == args.pdist_score_temperature == 0.01  # Atlas
    with pytest.raises(ValueError, match="retriever_learning_rate"):
        JMLRTrainingArguments(output_dir=str(tmp_path), retriever_learning_rate=None)


def test_default_context_budget_holds_seven_real_guideline_passages(llm_tokenizer, bert_tokenizer, ngc_path):
    """7 of the longest NGC passages (150 retriever tokens each) all reach the prompt whole."""
    docs = load_corpus(ngc_path).select(range(40))
    passages = chunk_corpus(docs, bert_tokenizer, 150, 32)
    order = sorted(range(len(passages["text"])), key=lambda i: -len(passages["text"][i]))[:7]
    top7 = [{"title": passages["title"][i], "text": passages["text"][i]} for i in order]
    builder = PromptBuilder(llm_tokenizer)  # the default budget, as the trainer gets it
    assert builder.max_context_tokens == JMLRTrainingArguments(output_dir="x").max_context_tokens
    kept = builder._truncate_passages(top7)
    assert [p["text"] for p in kept] == [p["text"] for p in top7]


def test_trainer_gives_the_retriever_whole_questions_and_its_own_learning_rate(
    tmp_path, llm_tokenizer, bert_tokenizer
):
    task = make_demo_task(num_facts=10, seed=0, related_docs_per_fact=3)  # 40 passages
    retriever = make_tiny_retriever(bert_tokenizer, query_max_length=32)  # e.g. a Stanford checkpoint's
    index = DocumentIndex.build(task.corpus, retriever, backend="exact")
    llm = make_tiny_llm(llm_tokenizer, hidden_size=64, intermediate_size=128)
    args = JMLRTrainingArguments(
        output_dir=str(tmp_path / "out"), learning_rate=2e-4, use_cpu=True, report_to="none", max_steps=1
    )
    trainer = JMLRTrainer(
        model=llm,
        retriever=retriever,
        index=index,
        args=args,
        train_dataset=task.train,
        processing_class=llm_tokenizer,
    )
    # the tiny encoder has 256 positions: the question is capped there, not at 32
    assert trainer.retriever.config.max_query_tokens == 256
    ids = trainer.retriever.tokenize([LONG_QUESTION], is_query=True)["input_ids"][0]
    assert len(ids) == len(bert_tokenizer(LONG_QUESTION)["input_ids"]) + 1
    optimizer = trainer.create_optimizer()
    lrs = {g.get("name", "llm"): g["lr"] for g in optimizer.param_groups}
    assert lrs == {"llm": 2e-4, "retriever": 1e-5}
    trainer.save_model(str(tmp_path / "saved"))
    from jmlr_hf import JMLRRetriever

    assert JMLRRetriever.from_pretrained(tmp_path / "saved" / "retriever").config.query_max_length == 512
