"""Shifted Sparse Attention (``attn_implementation="s2_attn"``).

The training-mode kernel is checked against a slow reference written here with explicit boolean masks;
everything else against ``transformers``' own SDPA, bit for bit.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, create_causal_mask, sdpa_mask

import jmlr_hf
from jmlr_hf.attention import s2_attn
from jmlr_hf.attention.s2_attn import (
    configure_s2_attn,
    register_s2_attn,
    resolve_group_size,
    s2_attention_forward,
)
from testing_utils import tiny_llama_config

# ---------------------------------------------------------------------------------------------------------------
# The slow, obviously-correct reference
# ---------------------------------------------------------------------------------------------------------------


def reference_s2(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_valid: torch.Tensor,
    group_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    """S2-Attn one (batch, head) at a time, in float64, with an explicit boolean mask per head.

    Head h < H // 2 uses groups [k*G, (k+1)*G); the others groups [G/2 + k*G, G/2 + (k+1)*G) (the first
    one [0, G/2)). A query attends to a key iff the key is not later, in the same group and not padding.
    Rows with nothing to attend are zero. Returns (b, N, H, d) like transformers' attention functions.
    """
    query, key, value = query.double(), key.double(), value.double()
    batch, num_heads, seq, head_dim = query.shape
    n_rep = num_heads // key.shape[1]
    key, value = key.repeat_interleave(n_rep, 1), value.repeat_interleave(n_rep, 1)
    scale = head_dim**-0.5 if scale is None else scale
    pos = torch.arange(seq)
    out = torch.zeros(batch, seq, num_heads, value.shape[-1], dtype=torch.float64)
    for h in range(num_heads):
        shift = group_size // 2 if h >= num_heads // 2 else 0
        group = (pos + shift) // group_size
        for b in range(batch):
            allowed = (
                (pos[:, None] >= pos[None, :]) & (group[:, None] == group[None, :]) & key_valid[b][None, :]
            )
            scores = (query[b, h] @ key[b, h].T * scale).masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no allowed key -> zeros
            out[b, :, h] = probs @ value[b, h]
    return out


def _module(training: bool = True, n_rep: int = 1, **config: object) -> torch.nn.Module:
    module = torch.nn.Module()
    module.config = types.SimpleNamespace(**config)
    module.num_key_value_groups = n_rep
    module.is_causal = True
    module.train(training)
    return module


def _qkv(batch: int, heads: int, kv_heads: int, seq: int, head_dim: int = 16, seed: int = 0):
    """Random q, k, v in the layout attention modules pass them: (b, h, N, d) views of (b, N, h, d)."""
    gen = torch.Generator().manual_seed(seed)

    def make(h: int) -> torch.Tensor:
        return torch.randn(batch, seq, h, head_dim, generator=gen).transpose(1, 2).requires_grad_()

    return make(heads), make(kv_heads), make(kv_heads)


def _key_valid(seq: int, lengths: list[int], left: bool = False) -> torch.Tensor:
    pos = torch.arange(seq)[None, :]
    lengths_t = torch.tensor(lengths)[:, None]
    return pos >= seq - lengths_t if left else pos < lengths_t


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).abs().max() / expected.abs().max())


def _pair(config: LlamaConfig, model_cls: type = LlamaForCausalLM) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same random model twice: with ``sdpa`` and with ``s2_attn``."""
    torch.manual_seed(0)
    sdpa = model_cls._from_config(copy.deepcopy(config), attn_implementation="sdpa")
    s2 = model_cls._from_config(copy.deepcopy(config), attn_implementation="s2_attn")
    s2.load_state_dict(sdpa.state_dict())
    return sdpa, s2


# ---------------------------------------------------------------------------------------------------------------
# Registration and configuration
# ---------------------------------------------------------------------------------------------------------------


def test_import_registers_attention_and_mask_function() -> None:
    assert jmlr_hf.register_s2_attn is register_s2_attn
    assert AttentionInterface()["s2_attn"] is s2_attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS["s2_attn"] is sdpa_mask
    sizes = (len(AttentionInterface()), len(ALL_MASK_ATTENTION_FUNCTIONS))
    register_s2_attn()
    register_s2_attn()
    assert (len(AttentionInterface()), len(ALL_MASK_ATTENTION_FUNCTIONS)) == sizes
    assert AttentionInterface()["s2_attn"] is s2_attention_forward


def test_padding_mask_is_built_for_s2_attn() -> None:
    config = tiny_llama_config(attn_implementation="s2_attn")
    embeds = torch.zeros(2, 6, config.hidden_size)
    padding = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    mask = create_causal_mask(
        config=config,
        inputs_embeds=embeds,
        attention_mask=padding,
        cache=None,
        position_ids=torch.arange(6)[None],
    )
    expected = sdpa_mask(batch_size=2, q_length=6, kv_length=6, attention_mask=padding.bool())
    assert mask is not None and torch.equal(mask, expected)


def test_from_pretrained_and_set_attn_implementation(tmp_path) -> None:
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "plain")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "plain", attn_implementation="s2_attn")
    assert model.config._attn_implementation == "s2_attn"
    assert resolve_group_size(model.config, 64) == 16  # the default ratio

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "plain", attn_implementation="sdpa")
    model.set_attn_implementation("s2_attn")
    assert model.config._attn_implementation == "s2_attn"
    configure_s2_attn(model, group_size=12)
    assert resolve_group_size(model.config, 1000) == 12

    # The settings travel in config.json and can be overridden at load time.
    configure_s2_attn(model, group_size_ratio=0.5)
    model.save_pretrained(tmp_path / "s2")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "s2", attn_implementation="s2_attn")
    assert resolve_group_size(model.config, 64) == 32
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "s2", attn_implementation="s2_attn", s2_group_size_ratio=0.125
    )
    assert resolve_group_size(model.config, 64) == 8


@pytest.mark.parametrize(
    ("config", "q_len", "expected"),
    [
        ({}, 64, 16),
        ({}, 100, 26),  # int(25.0) = 25 -> rounded up to even
        ({"s2_group_size_ratio": 0.5}, 7, 4),
        ({"s2_group_size_ratio": 1.0}, 9, 10),  # the whole (odd) sequence: plain attention
        ({}, 3, None),  # too short to split
        ({"s2_group_size": 6, "s2_group_size_ratio": 0.9}, 100, 6),
    ],
)
def test_resolve_group_size(config: dict, q_len: int, expected: int | None) -> None:
    assert resolve_group_size(types.SimpleNamespace(**config), q_len) == expected


@pytest.mark.parametrize(
    "config",
    [
        {"s2_group_size": 7},
        {"s2_group_size": 0},
        {"s2_group_size": 4.0},
        {"s2_group_size_ratio": 0.0},
        {"s2_group_size_ratio": 1.5},
        {"s2_group_size_ratio": -0.25},
        {"s2_group_size_ratio": "0.25"},
    ],
)
def test_bad_group_size_is_a_clear_error(config: dict) -> None:
    q, k, v = _qkv(1, 2, 2, 32)
    with pytest.raises(ValueError, match="s2_group_size"):
        s2_attention_forward(_module(**config), q, k, v, None)
    model = LlamaForCausalLM(tiny_llama_config())
    with pytest.raises(ValueError, match="s2_group_size"):
        configure_s2_attn(
            model, group_size=config.get("s2_group_size"), group_size_ratio=config.get("s2_group_size_ratio")
        )


def test_unsupported_models_are_a_clear_error() -> None:
    bert = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    with pytest.raises(ValueError, match="causal decoder-only"):
        configure_s2_attn(bert)
    q, k, v = _qkv(1, 2, 2, 32)
    module = _module()
    module.is_causal = False
    with pytest.raises(ValueError, match="not causal"):
        s2_attention_forward(module, q, k, v, None)
    with pytest.raises(ValueError, match="softcap"):
        s2_attention_forward(_module(), q, k, v, None, softcap=30.0)


# ---------------------------------------------------------------------------------------------------------------
# The training-mode kernel against the reference
# ---------------------------------------------------------------------------------------------------------------

REFERENCE_CASES = [
    # batch, heads, kv_heads, seq, config, valid lengths, left padding
    (1, 4, 4, 16, {"s2_group_size": 4}, None, False),
    (2, 4, 2, 19, {"s2_group_size": 6}, [19, 11], False),
    (2, 9, 3, 37, {"s2_group_size": 8}, [30, 3], False),  # SmolLM2's 9/3 heads; fully padded groups
    (3, 6, 1, 24, {"s2_group_size_ratio": 0.33}, [24, 24, 20], False),  # MQA, G = 8
    (2, 1, 1, 10, {"s2_group_size": 4}, [10, 7], False),  # a single head: it is the shifted half
    (1, 8, 2, 30, {"s2_group_size": 28}, None, False),  # fewer than 1.5 groups
    (2, 8, 8, 64, {}, None, False),  # default ratio, G = 16
    (2, 6, 2, 41, {"s2_group_size_ratio": 0.2}, [41, 25], True),  # left padding, G = 8
]


@pytest.mark.parametrize(("batch", "heads", "kv_heads", "seq", "config", "lengths", "left"), REFERENCE_CASES)
def test_training_output_and_gradients_match_reference(
    batch: int, heads: int, kv_heads: int, seq: int, config: dict, lengths: list[int] | None, left: bool
) -> None:
    q, k, v = _qkv(batch, heads, kv_heads, seq, seed=seq)
    key_valid = _key_valid(seq, lengths or [seq] * batch, left)
    mask = sdpa_mask(batch_size=batch, q_length=seq, kv_length=seq, attention_mask=key_valid)
    assert (mask is None) == (lengths is None)
    group_size = resolve_group_size(types.SimpleNamespace(**config), seq)
    assert group_size is not None and group_size < seq

    out, weights = s2_attention_forward(
        _module(n_rep=heads // kv_heads, **config), q, k, v, mask, scaling=0.3
    )
    assert weights is None and out.shape == (batch, seq, heads, 16) and out.dtype == torch.float32

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference_s2(q64, k64, v64, key_valid, group_size, scale=0.3)
    assert _rel_err(out, ref) < 1e-5

    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad_out)
    ref.backward(grad_out.double())
    for actual, expected in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert _rel_err(actual, expected) < 1e-5


def test_rows_without_keys_are_zero_and_finite() -> None:
    q, k, v = _qkv(2, 4, 2, 32)
    key_valid = _key_valid(32, [32, 2])
    mask = sdpa_mask(batch_size=2, q_length=32, kv_length=32, attention_mask=key_valid)
    out, _ = s2_attention_forward(_module(n_rep=2, s2_group_size=8), q, k, v, mask)
    out.sum().backward()
    # Batch 1: positions >= 8 (unshifted heads) and >= 4 (shifted heads) have no valid key in their group.
    assert torch.all(out[1, 8:, :2] == 0) and torch.all(out[1, 4:, 2:] == 0)
    assert out[1, :2].abs().sum() > 0
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_varlen_packing_matches_reference() -> None:
    """The flash-attn path's packing (groups minus padding as sequences), with a CPU stand-in kernel."""

    def varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
        assert causal and cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k) and max_q == max_k
        lengths = (cu_q[1:] - cu_q[:-1]).tolist()
        assert min(lengths) > 0 and max(lengths) == max_q
        n_rep = q.shape[1] // k.shape[1]
        outs = []
        for qs, ks, vs in zip(q.split(lengths), k.split(lengths), v.split(lengths)):
            o = F.scaled_dot_product_attention(
                qs.transpose(0, 1),
                ks.transpose(0, 1).repeat_interleave(n_rep, 0),
                vs.transpose(0, 1).repeat_interleave(n_rep, 0),
                is_causal=True,
                scale=softmax_scale,
            )
            outs.append(o.transpose(0, 1))
        return torch.cat(outs)

    for batch, heads, kv_heads, seq, group_size, lengths in [
        (2, 9, 3, 37, 8, [30, 3]),
        (2, 4, 2, 20, 6, None),
    ]:
        q, k, v = _qkv(batch, heads, kv_heads, seq)
        key_valid = _key_valid(seq, lengths or [seq] * batch)
        ok, padding = s2_attn._key_padding(
            sdpa_mask(batch_size=batch, q_length=seq, kv_length=seq, attention_mask=key_valid)
        )
        assert ok and (padding is None) == (lengths is None)
        out = s2_attn._grouped_varlen(q, k, v, padding, group_size, heads // kv_heads, 0.0, None, varlen)
        ref = reference_s2(q, k, v, key_valid, group_size) * key_valid[:, :, None, None]
        assert _rel_err(out, ref) < 1e-5


def test_varlen_path_refuses_masks_beyond_padding() -> None:
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    packed = causal.clone()
    packed[5:, :5] = False  # two packed sequences
    assert s2_attn._key_padding(packed[None, None]) == (False, None)
    assert s2_attn._key_padding(causal[None, None].float()) == (False, None)


def test_causality() -> None:
    q, k, v = _qkv(2, 6, 3, 40)
    module = _module(n_rep=2, s2_group_size=8)
    out, _ = s2_attention_forward(module, q, k, v, None)
    for t in (0, 3, 4, 11, 12, 25, 38):
        q2, k2, v2 = (x.detach().clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :])
        out2, _ = s2_attention_forward(module, q2, k2, v2, None)
        assert torch.equal(out[:, : t + 1], out2[:, : t + 1])
        if t < 38:
            assert not torch.equal(out[:, t + 1 :], out2[:, t + 1 :])


def test_model_causality_in_training_mode() -> None:
    _, model = _pair(tiny_llama_config(s2_group_size=8))
    model.train()
    ids = torch.randint(1, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    logits = model(input_ids=ids, use_cache=False).logits
    for t in (5, 17, 30):
        changed = ids.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % 127 + 1
        assert torch.allclose(
            model(input_ids=changed, use_cache=False).logits[:, : t + 1], logits[:, : t + 1]
        )


def test_dropout_is_applied_in_groups() -> None:
    q, k, v = _qkv(1, 4, 2, 32)
    module = _module(n_rep=2, s2_group_size=8)
    plain, _ = s2_attention_forward(module, q, k, v, None)
    torch.manual_seed(3)
    dropped, _ = s2_attention_forward(module, q, k, v, None, dropout=0.3)
    torch.manual_seed(3)
    again, _ = s2_attention_forward(module, q, k, v, None, dropout=0.3)
    assert torch.equal(dropped, again) and not torch.allclose(dropped, plain)
    # Dropout keeps the expectation: average many draws.
    mean = torch.stack(
        [s2_attention_forward(module, q, k, v, None, dropout=0.3)[0] for _ in range(400)]
    ).mean(0)
    assert (mean - plain).abs().mean() < 0.1 * plain.abs().mean()


def test_torch_compile_fullgraph() -> None:
    q, k, v = _qkv(2, 4, 2, 40)
    key_valid = _key_valid(40, [40, 29])
    mask = sdpa_mask(batch_size=2, q_length=40, kv_length=40, attention_mask=key_valid)
    module = _module(n_rep=2, s2_group_size=8)

    def attend(q, k, v, mask):
        return s2_attention_forward(module, q, k, v, mask)[0]

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    for m in (mask, None):
        expected = attend(q, k, v, m)
        grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
        actual = compiled(q, k, v, m)
        assert torch.allclose(actual, expected, atol=1e-6)
        for a, e in zip(torch.autograd.grad(actual.square().sum(), (q, k, v)), grads):
            assert torch.allclose(a, e, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Everything else is SDPA, bit for bit
# ---------------------------------------------------------------------------------------------------------------


def _batch(seq: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 128, (2, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, seq - 13 :] = 0
    return ids, mask


def test_eval_mode_is_sdpa_bit_for_bit() -> None:
    sdpa, s2 = _pair(tiny_llama_config())
    sdpa.eval(), s2.eval()
    ids, mask = _batch()
    with torch.no_grad():
        for attention_mask in (mask, None):
            expected = sdpa(input_ids=ids, attention_mask=attention_mask).logits
            assert torch.equal(s2(input_ids=ids, attention_mask=attention_mask).logits, expected)


@pytest.mark.parametrize(
    ("config", "seq"), [({"s2_group_size_ratio": 1.0}, 47), ({}, 3), ({"s2_group_size": 48}, 48)]
)
def test_short_training_sequences_are_sdpa_bit_for_bit(config: dict, seq: int) -> None:
    sdpa, s2 = _pair(tiny_llama_config(**config))
    sdpa.train(), s2.train()
    ids, mask = _batch(seq)
    mask[1, -1:] = 0
    expected = sdpa(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert torch.equal(s2(input_ids=ids, attention_mask=mask, use_cache=False).logits, expected)


def test_training_mode_uses_s2() -> None:
    sdpa, s2 = _pair(tiny_llama_config())
    sdpa.train(), s2.train()
    ids, mask = _batch()
    expected = sdpa(input_ids=ids, attention_mask=mask, use_cache=False).logits
    actual = s2(input_ids=ids, attention_mask=mask, use_cache=False).logits
    # The first group (12 tokens) of the unshifted heads, 6 of the shifted ones, sees the same keys.
    assert torch.allclose(actual[:, :6], expected[:, :6], atol=1e-6)
    assert not torch.allclose(actual[:, 12:], expected[:, 12:], atol=1e-3)


def test_cached_generation_is_sdpa_bit_for_bit() -> None:
    sdpa, s2 = _pair(tiny_llama_config())
    sdpa.eval(), s2.eval()
    ids, mask = _batch(40)
    ids, mask = ids.flip(1), mask.flip(1)  # left padding for generation
    kwargs = dict(
        max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0
    )
    expected = sdpa.generate(input_ids=ids, attention_mask=mask, **kwargs)
    actual = s2.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(actual.sequences, expected.sequences)
    assert all(torch.equal(a, e) for a, e in zip(actual.logits, expected.logits))


def test_decoding_with_a_cache_in_training_mode_is_sdpa() -> None:
    sdpa, s2 = _pair(tiny_llama_config())
    ids, _ = _batch(40)
    with torch.no_grad():
        outputs = []
        for model in (sdpa, s2):
            model.eval()
            cache = model(input_ids=ids[:, :-1], use_cache=True).cache
            model.train()  # q_len 1 against a 39-token cache: not an S2 call
            outputs.append(model(input_ids=ids[:, -1:], cache=cache, use_cache=True).logits)
    assert torch.equal(outputs[0], outputs[1])


# ---------------------------------------------------------------------------------------------------------------
# Models and training
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_cls", "model_cls"), [(MistralConfig, MistralForCausalLM), (Qwen2Config, Qwen2ForCausalLM)]
)
def test_gqa_model_families(config_cls: type, model_cls: type) -> None:
    config = config_cls(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=128,
        pad_token_id=0,
    )
    sdpa, s2 = _pair(config, model_cls)
    ids, mask = _batch()
    sdpa.eval(), s2.eval()
    with torch.no_grad():
        assert torch.equal(
            s2(input_ids=ids, attention_mask=mask).logits, sdpa(input_ids=ids, attention_mask=mask).logits
        )
    s2.train()
    out = s2(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in s2.parameters() if p.grad is not None)


def test_heavily_padded_batch_has_finite_loss_and_gradients() -> None:
    _, model = _pair(tiny_llama_config(s2_group_size=8))
    model.train()
    ids, mask = _batch()
    mask[1, 2:] = 0  # two real tokens: most groups of this row hold nothing but padding
    out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False)
    out.loss.backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    _, model = _pair(tiny_llama_config())
    model.train()
    ids, mask = _batch()
    labels = ids.masked_fill(mask == 0, -100)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def _train(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, steps: int, lr: float
) -> list[float]:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    labels = ids.masked_fill(mask == 0, -100)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_tiny_llama_trains_with_s2_attn() -> None:
    _, model = _pair(tiny_llama_config(attention_dropout=0.1))
    ids, mask = _batch(64)
    losses = _train(model, ids, mask, steps=12, lr=3e-3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.slow
def test_torch_compile_inductor_tiny_llama() -> None:
    _, model = _pair(tiny_llama_config())
    model.train()
    ids, mask = _batch()
    labels = ids.masked_fill(mask == 0, -100)

    def step(m: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = m(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        return out.logits.detach(), [p.grad.clone() for p in model.parameters()]

    logits, grads = step(model)
    compiled_logits, compiled_grads = step(torch.compile(model))
    assert torch.allclose(compiled_logits, logits, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(compiled_grads, grads))


@pytest.mark.slow
def test_smollm2_trains_with_s2_attn() -> None:
    try:
        from jmlr_hf.models import load_default_llm

        model, tokenizer = load_default_llm(attn_implementation="s2_attn")
    except (ImportError, AttributeError) as err:
        pytest.skip(f"the embedded SmolLM2 is not available: {err}")
    assert model.config._attn_implementation == "s2_attn"
    assert model.config.num_attention_heads == 9 and model.config.num_key_value_heads == 3
    configure_s2_attn(model, group_size_ratio=0.25)
    text = " ".join(
        f"Guideline {i}: in adults with community-acquired pneumonia, start empirical antibiotics within "
        "four hours and reassess after 48 to 72 hours."
        for i in range(30)
    )
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :256]
    assert ids.shape[1] == 256

    model.eval()
    with torch.no_grad():
        s2_logits = model(input_ids=ids).logits
        model.set_attn_implementation("sdpa")
        assert torch.equal(model(input_ids=ids).logits, s2_logits)
        model.set_attn_implementation("s2_attn")
        model.train()
        train_logits = model(input_ids=ids, use_cache=False).logits
        assert not torch.allclose(train_logits[:, 64:], s2_logits[:, 64:], atol=1e-3)  # groups of 64 tokens

    losses = _train(model, ids, torch.ones_like(ids), steps=4, lr=1e-4)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------------------------
# GPU: the flash-attn varlen path against the SDPA path
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_flash_attn_path_matches_sdpa_path() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if s2_attn._flash_varlen_func() is None:
        pytest.skip("needs flash_attn")
    batch, heads, kv_heads, seq = 2, 9, 3, 1000
    q, k, v = (t.detach().cuda().bfloat16().requires_grad_() for t in _qkv(batch, heads, kv_heads, seq, 64))
    key_valid = _key_valid(seq, [1000, 617]).cuda()
    mask = sdpa_mask(batch_size=batch, q_length=seq, kv_length=seq, attention_mask=key_valid, device="cuda")
    module = _module(n_rep=3, s2_group_size_ratio=0.25)
    group_size = resolve_group_size(module.config, seq)
    flash, _ = s2_attention_forward(module, q, k, v, mask)  # dispatches to flash-attn
    flash.float().square().sum().backward()
    flash_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    sdpa = s2_attn._grouped_sdpa(q, k, v, mask, group_size, 3, 0.0, None)
    valid = key_valid[:, :, None, None]
    (sdpa * valid).float().square().sum().backward()
    assert torch.allclose((flash * valid).float(), (sdpa * valid).float(), atol=2e-2, rtol=2e-2)
    for a, b in zip(flash_grads, (q.grad, k.grad, v.grad)):
        assert torch.allclose(a.float(), b.float(), atol=5e-2, rtol=5e-2)
    assert torch.all(flash[~key_valid] == 0)
