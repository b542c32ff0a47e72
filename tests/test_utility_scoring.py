"""Passage utility is scored with the LLM in eval mode: no dropout, no S2-Attn grouping, no batch effects."""

from __future__ import annotations

import pytest
import torch

import jmlr_hf  # noqa: F401  (registers "s2_attn")
from jmlr_hf.data import make_demo_task
from jmlr_hf.prompting import PromptBuilder
from jmlr_hf.scoring import passage_utility_nll
from testing_utils import make_tiny_llm


@pytest.fixture(scope="module")
def lora_s2_llm(llm_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = make_tiny_llm(
        llm_tokenizer,
        attn_implementation="s2_attn",
        hidden_size=64,
        intermediate_size=128,
        attention_dropout=0.1,
    )
    lora = LoraConfig(r=8, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for name, param in model.named_parameters():  # LoRA B starts at zero: make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    return model.train()


def test_utility_does_not_depend_on_dropout_or_the_other_passages(lora_s2_llm, llm_tokenizer):
    task = make_demo_task(num_facts=4, seed=0)
    row = dict(task.train[0])
    builder = PromptBuilder(llm_tokenizer, max_context_tokens=2048)
    passage = {"title": task.corpus[0]["title"], "text": task.corpus[0]["text"]}
    longer = [
        {"title": "Long", "text": "An unrelated guideline sentence about screening. " * k} for k in (20, 40)
    ]
    model = lora_s2_llm
    assert model.training

    alone = passage_utility_nll(model, builder, [row], [[passage]], "cpu")
    again = passage_utility_nll(model, builder, [row], [[passage]], "cpu")
    in_batch = passage_utility_nll(model, builder, [row], [[*longer, passage]], "cpu")
    torch.testing.assert_close(again, alone, rtol=0, atol=0)
    torch.testing.assert_close(in_batch[0, -1], alone[0, 0], rtol=1e-5, atol=1e-5)
    # training mode (LoRA dropout, S2 grouping) is back for the LM loss
    assert model.training and all(m.training for m in model.modules())
    # in training mode the same prompts give a different, random answer: the test above can fail
    with torch.no_grad():
        batch = builder.batch([builder.prompt(row, [passage])] * 2, ["x"] * 2, "left")
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(logits[0], logits[1])
