"""The GPU paths: QLoRA (4-bit LLM + LoRA + trainable retriever) and the faiss-gpu index.

The ``gpu`` tests skip without CUDA (and without bitsandbytes / faiss-gpu); the others check, on the CPU,
that these paths fail clearly and that their packages are imported lazily.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from jmlr_hf import DocumentIndex
from jmlr_hf.models import load_llm
from jmlr_hf.retriever.index import _FaissBackend
from testing_utils import TRAINER_DEFAULTS, make_tiny_llm, make_tiny_retriever, tiny_llama_config

WORDS = "aspirin metformin insulin statin warfarin heparin asthma sepsis anemia fever cough rash pain dose".split()


def _corpus(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        picks = torch.randint(len(WORDS), (int(torch.randint(5, 30, (1,), generator=g)),), generator=g)
        rows.append({"id": f"d{i}", "title": f"Guideline {i}", "text": " ".join(WORDS[j] for j in picks)})
    return rows


# ---------------------------------------------------------------------- QLoRA on the CPU: clear errors


def test_4bit_without_cuda_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        load_llm(tmp_path, quantization="4bit")


def test_4bit_without_bitsandbytes_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(ImportError, match=r"needs bitsandbytes: pip install 'jmlr-hf\[gpu\]'"):
        load_llm(tmp_path, quantization="4bit")


def test_unknown_quantization_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="quantization must be None or one of"):
        load_llm(tmp_path, quantization="3bit")


def test_plain_load_llm_reads_a_saved_model(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_llama_config()).save_pretrained(tmp_path)
    model = load_llm(tmp_path, attn_implementation="s2_attn", dtype=torch.bfloat16)
    assert model.config._attn_implementation == "s2_attn"
    assert next(model.parameters()).dtype == torch.bfloat16


def _module_level_imports(tree: ast.AST, roots: set[str]) -> list[int]:
    """Line numbers of imports of ``roots`` that run at import time (not inside a function body)."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module]
            if not in_function and any(n.split(".")[0] in roots for n in names):
                found.append(child.lineno)
            visit(child, inside)

    visit(tree, False)
    return found


def test_gpu_packages_are_imported_lazily():
    """No module of jmlr_hf imports bitsandbytes or flash_attn at import time (only inside functions),
    so ``import jmlr_hf`` works and stays fast without them."""
    import jmlr_hf

    package = Path(jmlr_hf.__file__).parent
    eager = {}
    for path in sorted(package.rglob("*.py")):
        lines = _module_level_imports(
            ast.parse(path.read_text(encoding="utf-8")), {"bitsandbytes", "flash_attn"}
        )
        if lines:
            eager[str(path.relative_to(package))] = lines
    assert not eager, f"imported at module level: {eager}"
    # and the lazy imports exist where the GPU paths are
    sources = {
        name: (package / name).read_text(encoding="utf-8") for name in ("models.py", "attention/s2_attn.py")
    }
    assert "import bitsandbytes" in sources["models.py"]
    assert "from flash_attn import" in sources["attention/s2_attn.py"]


# ---------------------------------------------------------------------- faiss: GPU by default when it can


def test_faiss_backend_searches_on_the_gpu_by_default_when_it_can(monkeypatch, tiny_retriever):
    """With faiss-gpu and CUDA (simulated), the default ``use_gpu=None`` searches a GPU copy of the index
    (made once), with the same results as the exact backend."""
    corpus = _corpus(100, seed=3)
    exact = DocumentIndex.build(corpus, tiny_retriever, backend="exact")
    copies = []

    def fake_gpu_copy(self, index):
        copies.append(index)
        return index  # stands in for faiss.index_cpu_to_gpu(...)

    monkeypatch.setattr(_FaissBackend, "_wants_gpu", lambda self: True)
    monkeypatch.setattr(_FaissBackend, "_maybe_gpu", fake_gpu_copy)
    fast = DocumentIndex.build(
        corpus, tiny_retriever, backend="faiss", nlist=4, nprobe=4, tokens_per_query_token=64
    )
    assert fast.backend.use_gpu is None
    queries = ["insulin dose", "rash and cough", "statin pain"]
    top_exact = [[h["passage_id"] for h in hits] for hits in exact.search(queries, k=5)]
    top_fast = [[h["passage_id"] for h in hits] for hits in fast.search(queries, k=5)]
    fast.search(queries, k=5)
    assert len(copies) == 1 and copies[0] is fast.backend.index
    assert [t[0] for t in top_fast] == [t[0] for t in top_exact]


# ---------------------------------------------------------------------- on a CUDA machine


def _faiss_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("needs faiss-gpu")
    return faiss


@pytest.mark.gpu
def test_faiss_gpu_index_matches_the_exact_backend(bert_tokenizer):
    faiss = _faiss_gpu()
    retriever = make_tiny_retriever(bert_tokenizer, dim=32).cuda()
    corpus = _corpus(400, seed=5)
    exact = DocumentIndex.build(corpus, retriever, backend="exact")
    fast = DocumentIndex.build(
        corpus, retriever, backend="faiss", nlist=16, nprobe=16, tokens_per_query_token=256
    )
    searched = fast.backend._search_index()
    assert "Gpu" in type(searched).__name__, type(searched).__name__  # the default uses the GPU
    assert isinstance(faiss.index_gpu_to_cpu(searched), faiss.Index)
    queries = ["insulin dose", "rash and cough", "statin pain", "anemia fever", "warfarin heparin"]
    e = [[h["passage_id"] for h in hits] for hits in exact.search(queries, k=10)]
    f = [[h["passage_id"] for h in hits] for hits in fast.search(queries, k=10)]
    assert [x[0] for x in f] == [x[0] for x in e]
    recall = sum(len(set(a) & set(b)) for a, b in zip(e, f)) / sum(len(a) for a in e)
    assert recall >= 0.95


@pytest.mark.gpu
def test_qlora_joint_step_trains_lora_and_the_retriever(tmp_path, bert_tokenizer):
    """One joint step with a 4-bit LLM + LoRA: the retriever is in the optimizer and changes, the LoRA
    weights change, the 4-bit base weights do not."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from jmlr_hf import JMLRTrainer, JMLRTrainingArguments
    from jmlr_hf.data import make_demo_task
    from jmlr_hf.models import MissingDefaultModelError, default_llm_path

    try:
        tokenizer = AutoTokenizer.from_pretrained(default_llm_path())
    except MissingDefaultModelError as err:
        pytest.skip(str(err))
    make_tiny_llm(
        tokenizer, hidden_size=128, intermediate_size=256, max_position_embeddings=1024
    ).save_pretrained(tmp_path / "llm")
    llm = load_llm(tmp_path / "llm", quantization="4bit", attn_implementation="s2_attn")
    assert getattr(llm, "is_loaded_in_4bit", False)
    demo = make_demo_task(num_facts=24, seed=0)
    retriever = make_tiny_retriever(bert_tokenizer)
    index = DocumentIndex.build(demo.corpus, retriever, backend="exact")
    args = JMLRTrainingArguments(
        **{**TRAINER_DEFAULTS, "use_cpu": False, "max_steps": 1, "bf16": torch.cuda.is_bf16_supported()},
        output_dir=str(tmp_path / "out"),
    )
    trainer = JMLRTrainer(
        model=llm,
        retriever=retriever,
        index=index,
        args=args,
        train_dataset=demo.train,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    retriever_before = {n: p.detach().clone() for n, p in trainer.retriever.named_parameters()}
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    base_before = {
        n: p.detach().clone() for n, p in trainer.model.named_parameters() if "q_proj.base_layer" in n
    }
    assert lora_before and base_before
    trainer.train()
    groups = [g for g in trainer.optimizer.param_groups if g.get("name") == "retriever"]
    in_groups = {id(p) for g in groups for p in g["params"]}
    named = dict(trainer.retriever.named_parameters())
    assert all(id(named[n]) in in_groups for n in trainer.retriever_param_names)
    changed = [n for n, b in retriever_before.items() if not torch.equal(b, named[n].detach())]
    assert len(changed) >= len(retriever_before) - 2, "retriever did not train"  # the pooler gets no gradient
    model_params = dict(trainer.model.named_parameters())
    lora_b = [n for n in lora_before if "lora_B" in n]
    assert lora_b and all(not torch.equal(lora_before[n], model_params[n].detach()) for n in lora_b)
    assert all(torch.equal(base_before[n], model_params[n].detach()) for n in base_before)
