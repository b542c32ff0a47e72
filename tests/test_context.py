"""LongLoRA-style context extension: linear RoPE scaling and trainable embeddings/norms beside LoRA."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import jmlr_hf  # noqa: F401  (registers s2_attn)
from jmlr_hf.attention.context import (
    apply_linear_rope_scaling,
    embedding_and_norm_module_names,
    extend_context,
    mark_embeddings_and_norms_trainable,
)
from testing_utils import tiny_llama_config


def tiny_config(**overrides: object) -> LlamaConfig:
    return tiny_llama_config(**{"max_position_embeddings": 64, "pad_token_id": None, **overrides})


def tiny_model(**overrides: object) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(**overrides)).eval()


def test_extend_context_matches_a_model_built_with_linear_rope() -> None:
    model = tiny_model()
    factor = extend_context(model, 200)
    assert factor == 4.0  # ceil(200 / 64)
    assert model.config.rope_parameters == {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    assert model.config.max_position_embeddings == 256

    reference = LlamaForCausalLM(
        tiny_config(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    ).eval()
    reference.load_state_dict(model.state_dict())
    assert torch.equal(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    ids = torch.randint(0, 128, (1, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
        # ... and it really changed the positions
        assert not torch.allclose(model(input_ids=ids).logits, tiny_model()(input_ids=ids).logits)


def test_extend_context_within_the_original_length_changes_nothing() -> None:
    model = tiny_model()
    before = copy.deepcopy(model.config.rope_parameters)
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    assert extend_context(model, 64) == 1.0
    assert model.config.rope_parameters == before and model.config.max_position_embeddings == 64
    assert torch.equal(model.model.rotary_emb.inv_freq, inv_freq)


def test_linear_factors_compose_and_configs_can_be_scaled_before_building() -> None:
    config = tiny_config()
    assert apply_linear_rope_scaling(config, 2) == 2.0
    assert apply_linear_rope_scaling(config, 1.5) == 3.0
    model = LlamaForCausalLM(config)
    assert model.model.rotary_emb.rope_type == "linear"
    expected = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16)) / 3.0
    assert torch.allclose(model.model.rotary_emb.inv_freq, expected)


def test_extend_context_works_on_peft_models_and_marks_embeddings_and_norms() -> None:
    peft_model = get_peft_model(tiny_model(), LoraConfig(target_modules=["q_proj", "v_proj"], r=4))
    assert extend_context(peft_model, 128, train_embeddings_and_norms=True) == 2.0
    assert peft_model.get_base_model().model.rotary_emb.rope_type == "linear"
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert "base_model.model.model.embed_tokens.weight" in trainable
    assert "base_model.model.model.norm.weight" in trainable
    assert "base_model.model.model.layers.1.post_attention_layernorm.weight" in trainable
    assert any("lora_A" in name for name in trainable)
    assert not any("mlp" in name or "base_layer" in name for name in trainable)


def test_mark_embeddings_and_norms_trainable_returns_the_names() -> None:
    peft_model = get_peft_model(tiny_model(), LoraConfig(target_modules=["q_proj"], r=4))
    names = mark_embeddings_and_norms_trainable(peft_model)
    assert len(names) == 1 + 2 * 2 + 1  # embeddings, two norms per layer, the final norm
    with pytest.raises(ValueError, match="matches"):
        mark_embeddings_and_norms_trainable(peft_model, patterns=("no_such_module",))


def test_modules_to_save_trains_and_saves_embeddings_and_norms(tmp_path) -> None:
    model = tiny_model()
    names = embedding_and_norm_module_names(model)
    assert names == ["embed_tokens", "input_layernorm", "norm", "post_attention_layernorm"]
    peft_model = get_peft_model(model, LoraConfig(target_modules=["q_proj"], r=4, modules_to_save=names))
    peft_model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert any("embed_tokens" in key for key in saved)
    assert any("layers.0.input_layernorm" in key for key in saved)
    assert any(key.endswith("model.norm.weight") for key in saved)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_length": 0}, "positive integer"),
        ({"target_length": 100.0}, "positive integer"),
        ({"target_length": 128, "original_length": -1}, "positive integer"),
    ],
)
def test_extend_context_rejects_bad_lengths(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        extend_context(tiny_model(), **kwargs)


@pytest.mark.parametrize("factor", [0.5, 0, float("inf"), True])
def test_bad_factors_are_rejected(factor: object) -> None:
    with pytest.raises(ValueError, match="finite number >= 1"):
        apply_linear_rope_scaling(tiny_config(), factor)


def test_unsupported_rope_and_models_are_rejected() -> None:
    llama3 = tiny_config(
        rope_parameters={
            "rope_type": "llama3",
            "factor": 8.0,
            "rope_theta": 10000.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    )
    with pytest.raises(ValueError, match="'llama3'"):
        apply_linear_rope_scaling(llama3, 2)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="rope_parameters"):
        extend_context(gpt2, 4096)
    # A model whose rotary module is not built from its config cannot be updated in place.
    model = tiny_model()
    model.config = copy.deepcopy(model.config)
    with pytest.raises(ValueError, match="rotary-embedding"):
        apply_linear_rope_scaling(model, 2)
    assert model.config.rope_parameters["rope_type"] == "default"  # nothing half-done
