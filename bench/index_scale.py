"""The index at scale (issue 11): a 20M+ token store mapped from disk, residual compression, 2 processes a node.

Phases (subcommands), each writing ``<phase>.json`` into ``--out`` so that they can run one at a time and
``report`` assembles them; big files (vectors, index folders) go to ``--data`` (default: ``--out``):

``synth``
    The >= 20M-token store: the real NGC token vectors (``--source``: 44,535 passages, 6.57M bf16 vectors
    of dim 128) replicated ``--copies`` times (default 4: 26.3M tokens, 178k passages), each copy with
    gaussian noise (``--noise`` per dimension) then re-normalized; passage and document ids suffixed
    ``@<copy>``. Writes ``<data>/synth/{vectors.npy (uint16 bf16 bits), doclens.npy, passages.parquet}``.
    Check that the noise keeps recall behaviour: at ``--check-passages`` (10,000) real passages, faiss
    recall@30 against exact MaxSim on the real vectors and on their noisy copy, and how much of the exact
    top-30 the noise keeps.
``build``
    ``DocumentIndex.from_vectors(..., backend="faiss", folder=<data>/index)`` from the synthetic store:
    build time apart from encoding (store files + faiss), bytes on disk a token.
``search``
    In fresh processes, one after the other: (1) the saved index memory-mapped (``DocumentIndex.load``):
    VmRSS / RssAnon / RssFile (``/proc/self/status``), USS / PSS (``/proc/self/smaps_rollup``) and the
    resident part of ``vectors.npy`` after loading and after the latency queries; p50/p95 of
    ``index.search([q], k=30)`` with query encoding, full-length and 32-token queries alternating; then
    recall@30 against exact MaxSim over the whole store (``--recall-queries`` questions, exact backend).
    (2) the baseline: the same index with its vectors read into RAM (what format version 1 does).
``compact``
    A :class:`~jmlr_hf.retriever.residual.ResidualCodec` (``--nbits``, ``--centroids``; ``--buckets pooled
    --no-scale``: ColBERTv2's layout instead of the default per-dimension buckets of the unit-norm residual
    and a float16 scale a token) fitted on a sample of the store, every token compressed into
    ``<data>/compact``; the index searched with that store (faiss candidates, rerank on decompressed
    vectors): bytes a token, recall@30 against the bf16 exact top-30 of ``search`` (the same questions),
    latency, memory.
``sweep``
    faiss settings (nprobe, hits a query token, reranked) on the mapped index against recall@30 (``search``'s
    exact top-30) and p50 latency, with the time of each stage (query encoding, faiss, candidates, rerank).
``candidates``
    Where ``search``'s exact top-30 sits among the passages faiss hits reach (``--settings nprobe,hits``):
    reached or not, its rank under the approximate MaxSim that prunes candidates (how many reranked passages
    each question needs), the exact 30th score against each query token's last hit; how alike the store's
    token vectors are. Explains what recall at scale costs.
``growth``
    Private memory (RssAnon) of one search process over ``--queries`` different full-length questions, every
    ``--every`` searches: does it keep growing? (``PYTHONPATH=<checkout>/src`` measures another version.)
``replicas``
    Does replicating real vectors (``synth``) change recall behaviour? At 10,000 passages: faiss recall@30
    against exact on the real passages and on 2,500 of them replicated 4x with the same noise.
``two-proc``
    (1) Two processes map the same index: the second's USS / PSS against one store's size (the first
    holds the pages in the page cache, searched). (2) A 2-process ``torch.distributed`` refresh (build into
    a folder) of ``--refresh-passages`` real passages: passages encoded by each process, wall time,
    against one process with both threads.
``report``
    The markdown section for docs/benchmarks.md, to stdout (``--write``: into docs/benchmarks.md).

Full run (the lead, alone on the machine), in order::

    export HF_HUB_OFFLINE=1 JMLR_SHARED_DATA=/work/shared/data OUT=outputs/index_scale
    python bench/index_scale.py synth    --out $OUT
    python bench/index_scale.py build    --out $OUT
    python bench/index_scale.py search   --out $OUT
    python bench/index_scale.py compact  --out $OUT
    python bench/index_scale.py two-proc --out $OUT
    python bench/index_scale.py report   --out $OUT

Smoke run (minutes): the same with ``--copies 1 --max-passages 3000`` on ``synth`` and ``--queries 6
--recall-queries 3`` on ``search`` / ``compact``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from retrieval import ROOT, data_dir, log, machine_description, write_section

SECTION = "## The index at scale (issue 11)"
K = 30
SCRIPT = Path(__file__).resolve()


# ---------------------------------------------------------------------------------------- helpers
def mem_stats(mapped_file: str | None = None) -> dict[str, float]:
    """This process's memory in MiB: VmRSS/VmHWM/RssAnon/RssFile/RssShmem (``/proc/self/status``), Rss/Pss/USS
    (``smaps_rollup``) and, for ``mapped_file``, the resident and proportional part of its mapping."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) / 1024
    rollup: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            rollup[key] = int(value.split()[0])
    out["Rss"], out["Pss"] = rollup.get("Rss", 0) / 1024, rollup.get("Pss", 0) / 1024
    out["USS"] = (rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)) / 1024
    if mapped_file:
        rss = pss = 0
        inside = False
        for line in Path("/proc/self/smaps").read_text().splitlines():
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip().endswith(mapped_file)
            elif inside and first == "Rss:":
                rss += int(line.split()[1])
            elif inside and first == "Pss:":
                pss += int(line.split()[1])
        out["mapped_Rss"], out["mapped_Pss"] = rss / 1024, pss / 1024
    return {k: round(v, 1) for k, v in out.items()}


def questions(n: int) -> list[str]:
    medqa = json.loads((data_dir() / "mirage" / "benchmark.json").read_text(encoding="utf-8"))["medqa"]
    return [medqa[qid]["question"] for qid in sorted(medqa)[:n]]


def retriever_for_queries():
    """The default retriever (embedded MiniLM, seeded ColBERT head: the same in every process)."""
    from jmlr_hf.recipe import load_retriever

    return load_retriever("default").eval()


def save_json(out: Path, name: str, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {**record, "command": " ".join(shlex.quote(a) for a in sys.argv), "date": _now()}
    (out / f"{name}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    log(f"wrote {out / name}.json")


def load_json(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _now() -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"


def folder_bytes(folder: Path, names: list[str] | None = None) -> int:
    return sum(
        p.stat().st_size for p in folder.iterdir() if p.is_file() and (names is None or p.name in names)
    )


def recall(found: list[list[int]], reference: list[list[int]]) -> float:
    return float(np.mean([len(set(f[:K]) & set(r[:K])) / K for f, r in zip(found, reference)]))


def exact_top(store, encoded, k: int = K) -> list[list[int]]:
    """Exact MaxSim top-``k`` over the whole store (the exact backend; queries one batch)."""
    import mmap

    from jmlr_hf.retriever.backends import ExactBackend

    raw = getattr(getattr(store, "_bits", None), "_mmap", None)
    if raw is not None:  # a mapped store is read sequentially here: read ahead again (search maps it RANDOM)
        raw.madvise(mmap.MADV_SEQUENTIAL)

    q, qmask = encoded[0].float(), encoded[1].bool()
    top: list[list[int]] = []
    for a in range(0, len(q), 16):  # a few questions at a time: rows padded to the batch's longest only
        used = qmask[a : a + 16].any(0)  # the query positions any of them uses
        top += ExactBackend().search(store, q[a : a + 16, used], qmask[a : a + 16, used], k).indices.tolist()
    return top


SETTINGS = {"full": None, "32": 32}  # query_max_length of the two query settings


def encode(retriever, texts: list[str], setting: str):
    retriever.config.query_max_length = SETTINGS[setting]
    return retriever.encode_queries(texts, show_progress_bar=False)


def latency(index, texts: list[str], warmup: int = 3) -> dict[str, dict[str, float]]:
    """p50/p95 (ms) of ``index.search([q], k)`` with query encoding, the settings alternating query by query."""
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    names = list(SETTINGS)
    for name in names:
        index.retriever.config.query_max_length = SETTINGS[name]
        index.search(texts[:warmup], k=K)
    for i, text in enumerate(texts):
        for name in names if i % 2 == 0 else names[::-1]:
            index.retriever.config.query_max_length = SETTINGS[name]
            t0 = time.perf_counter()
            index.search([text], k=K)
            times[name].append(time.perf_counter() - t0)
    return {
        name: {
            "p50_ms": 1000 * float(np.median(v)),
            "p95_ms": 1000 * float(np.percentile(v, 95)),
            "n": len(v),
        }
        for name, v in times.items()
    }


def run_worker(args: argparse.Namespace, job: dict, timeout: float | None = None) -> dict:
    """Run ``worker`` with ``job`` in a fresh process; returns what it wrote."""
    result = Path(args.out) / f"_worker_{job['name']}.json"
    result.unlink(missing_ok=True)
    job = {**job, "result": str(result)}
    cmd = [sys.executable, str(SCRIPT), "worker", "--out", str(args.out), "--job", json.dumps(job)]
    log(f"worker {job['name']}: fresh process")
    subprocess.run(cmd, check=True, timeout=timeout)
    return json.loads(result.read_text(encoding="utf-8"))


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    out = Path(args.out)
    data = Path(args.data) if args.data else out
    return out, data


# ---------------------------------------------------------------------------------------- synth
def noisy_copy(real: torch.Tensor, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``real`` (bf16 token vectors) plus gaussian noise of sigma ``noise`` a dimension, re-normalized (float32)."""
    x = real.float().numpy()
    x += noise * rng.standard_normal(x.shape, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synth(args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from safetensors import safe_open

    from jmlr_hf.retriever.store import bf16_from_bits, bf16_to_bits

    out, data = _paths(args)
    src = Path(args.source)
    folder = data / "synth"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with safe_open(str(src / "vectors.safetensors"), "pt") as f:
        doclens = f.get_tensor("doclens").numpy().astype(np.int64)
        n_pass = min(args.max_passages or len(doclens), len(doclens))
        doclens = doclens[:n_pass]
        n_tok = int(doclens.sum())
        real = f.get_slice("vectors")[:n_tok]  # bf16 [n_tok, dim], in RAM (1.7 GB for all of NGC)
    dim = int(real.shape[1])
    log(
        f"source: {n_pass} passages, {n_tok:,} tokens, dim {dim}; {args.copies} noisy copies (sigma {args.noise})"
    )
    vectors = np.lib.format.open_memmap(
        folder / "vectors.npy", mode="w+", dtype=np.uint16, shape=(n_tok * args.copies, dim)
    )
    rng = np.random.default_rng(args.seed)
    block = 1 << 18
    for c in range(args.copies):
        for a in range(0, n_tok, block):
            x = noisy_copy(real[a : a + block], args.noise, rng)
            vectors[c * n_tok + a : c * n_tok + a + len(x)] = bf16_to_bits(torch.from_numpy(x))
        log(f"copy {c + 1}/{args.copies} written")
    vectors.flush()
    np.save(folder / "doclens.npy", np.tile(doclens, args.copies))
    table = pq.read_table(src / "passages.parquet").slice(0, n_pass)
    copies = []
    for c in range(args.copies):
        suffix = pa.scalar(f"@{c}")
        copy = table
        for col in ("passage_id", "doc_id"):
            i = copy.schema.get_field_index(col)
            copy = copy.set_column(i, col, pc.binary_join_element_wise(copy[col], suffix, ""))
        copies.append(copy)
    pq.write_table(pa.concat_tables(copies), folder / "passages.parquet")
    seconds = time.perf_counter() - t0
    log(
        f"synthetic store: {n_tok * args.copies:,} tokens, {n_pass * args.copies:,} passages ({seconds:.0f}s)"
    )

    # does the noise keep recall behaviour? faiss recall@30 on real vs noisy vectors at the check scale
    from jmlr_hf import DocumentIndex

    m = min(args.check_passages, n_pass)
    m_tok = int(doclens[:m].sum())
    retriever = retriever_for_queries()
    texts = questions(args.check_queries)
    cols = table.slice(0, m).to_pydict()
    res: dict[str, Any] = {"check_passages": m, "check_tokens": m_tok, "check_queries": len(texts)}
    tops = {}
    for name, vec in (("real", real[:m_tok]), ("noisy", bf16_from_bits(np.asarray(vectors[:m_tok])))):
        t1 = time.perf_counter()
        index = DocumentIndex.from_vectors(cols, vec, doclens[:m], retriever, backend="faiss")
        build_s = time.perf_counter() - t1
        enc = encode(retriever, texts, "full")
        _, found = index.search_encoded(enc, K)
        tops[name] = exact_top(index.store, enc)
        res[name] = {"faiss_recall@30": recall(found.tolist(), tops[name]), "build_s": build_s}
        log(f"{name}: faiss recall@30 vs exact {res[name]['faiss_recall@30']:.3f} (build {build_s:.0f}s)")
    res["noisy_exact_top30_overlap_with_real"] = recall(tops["noisy"], tops["real"])
    cos = (real[:m_tok].float() * bf16_from_bits(np.asarray(vectors[:m_tok])).float()).sum(1)
    res["noisy_vs_real_cosine_mean"] = float(cos.mean())
    res.update(
        source=str(src),
        copies=args.copies,
        noise=args.noise,
        passages=n_pass * args.copies,
        tokens=n_tok * args.copies,
        dim=dim,
        write_s=seconds,
        bytes=folder_bytes(folder),
        fingerprint_matches_source=_fingerprint_matches(src, retriever),
    )
    save_json(out, "synth", res)


def _fingerprint_matches(src: Path, retriever) -> bool | None:
    try:
        config = json.loads((src / "index_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("retriever_fingerprint") == retriever.weights_fingerprint()


# ---------------------------------------------------------------------------------------- build
def build(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from jmlr_hf import DocumentIndex
    from jmlr_hf.retriever.backends import faiss as faiss_module
    from jmlr_hf.retriever.store import map_npy

    out, data = _paths(args)
    folder = data / "synth"
    vectors = map_npy(folder / "vectors.npy", random_access=False)
    doclens = np.load(folder / "doclens.npy")
    passages = pq.read_table(folder / "passages.parquet")
    retriever = retriever_for_queries()
    timing: dict[str, float] = {}
    original = faiss_module.FaissBackend.build

    def timed_build(self, store):  # the faiss part of from_vectors
        t = time.perf_counter()
        original(self, store)
        timing["faiss_s"] = time.perf_counter() - t

    faiss_module.FaissBackend.build = timed_build
    kwargs = {"nlist": args.nlist} if args.nlist else {}
    log(f"building the faiss index over {len(vectors):,} tokens into {data / 'index'}")
    t0 = time.perf_counter()
    index = DocumentIndex.from_vectors(
        passages, vectors, doclens, retriever, backend="faiss", folder=data / "index", **kwargs
    )
    total = time.perf_counter() - t0
    files = {p.name: p.stat().st_size for p in (data / "index").iterdir() if p.is_file()}
    n_tok = index.num_tokens
    res = {
        "passages": index.num_passages,
        "tokens": n_tok,
        "build_s": total,
        "faiss_s": timing.get("faiss_s"),
        "store_write_s": total - timing.get("faiss_s", 0.0),
        "nlist": index.backend.nlist,
        "nprobe": index.backend.nprobe,
        "files": files,
        "disk_bytes_per_token": sum(files.values()) / n_tok,
        "vectors_bytes_per_token": files["vectors.npy"] / n_tok,
        "faiss_bytes_per_token": files.get("faiss.index", 0) / n_tok,
        "peak_rss_mib": mem_stats()["VmHWM"],
    }
    log(
        f"built in {total:.0f}s (faiss {res['faiss_s']:.0f}s); {res['disk_bytes_per_token']:.0f} B/token on disk"
    )
    save_json(out, "build", res)


# ---------------------------------------------------------------------------------------- workers
def worker(args: argparse.Namespace) -> None:
    """One fresh process: load the index (mapped, in RAM or compact), measure, search, write the result."""
    from jmlr_hf import DocumentIndex
    from jmlr_hf.retriever.store import VectorStore

    job = json.loads(args.job)
    torch.manual_seed(0)
    record: dict[str, Any] = {"pid": os.getpid(), "threads": torch.get_num_threads()}
    record["mem_start"] = mem_stats()
    retriever = retriever_for_queries()
    record["mem_retriever"] = mem_stats()
    folder = Path(job["index"])
    t0 = time.perf_counter()
    index = DocumentIndex.load(folder, retriever, allow_stale=True)
    mapped_name = "vectors.npy"
    if job["mode"] == "ram":  # the baseline: every vector read into RAM (what format version 1 does)
        bits = np.load(folder / "vectors.npy", allow_pickle=False)
        index.store = VectorStore(
            torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16), index.store.doclens
        )
    elif job["mode"] == "compact":
        from jmlr_hf.retriever.residual import ResidualStore

        index.store = ResidualStore.load(job["compact"])
        mapped_name = "residuals.npy"
    record["load_s"] = time.perf_counter() - t0
    record["mem_loaded"] = mem_stats(mapped_name)
    texts = questions(job["queries"])
    if texts:
        record["latency"] = latency(index, texts)
    record["mem_searched"] = mem_stats(mapped_name)
    if job.get("hold"):  # keep the pages mapped until told to stop (the two-process check)
        Path(job["result"]).with_suffix(".ready").write_text(json.dumps(record), encoding="utf-8")
        stop = Path(job["hold"])
        while not stop.exists():
            time.sleep(0.2)
    if job.get("other_pid"):  # the first process's memory, now that this one shares its pages
        record["other_rollup"] = _rollup(int(job["other_pid"]))
    if job.get("recall_queries"):
        rq = questions(job["recall_queries"])
        record["recall"], record["found"] = {}, {}
        reference = job.get("reference") or {}
        for name in SETTINGS:
            enc = encode(index.retriever, rq, name)
            _, found = index.search_encoded(enc, K)
            found = found.tolist()
            t1 = time.perf_counter()
            ref = reference.get(name) or exact_top(index.store, enc)
            if name not in reference:
                record.setdefault("exact", {})[name] = ref
                record.setdefault("exact_s", {})[name] = time.perf_counter() - t1
            record["found"][name] = found
            record["recall"][name] = recall(found, ref)
            log(f"{job['name']}: recall@30 {name} {record['recall'][name]:.3f}")
        record["mem_after_recall"] = mem_stats(mapped_name)
    record["num_tokens"], record["num_passages"] = index.num_tokens, index.num_passages
    record["bytes_per_token"] = float(index.store.bytes_per_token)
    Path(job["result"]).write_text(json.dumps(record), encoding="utf-8")


def _rollup(pid: int) -> dict[str, float]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            values[key] = int(value.split()[0])
    return {
        "Rss": values.get("Rss", 0) / 1024,
        "Pss": values.get("Pss", 0) / 1024,
        "USS": (values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)) / 1024,
    }


# ---------------------------------------------------------------------------------------- search
def search(args: argparse.Namespace) -> None:
    out, data = _paths(args)
    index = str(data / "index")
    res: dict[str, Any] = {"queries": args.queries, "recall_queries": args.recall_queries}
    reference = None
    if args.reuse_reference:  # the exact top-30 of an earlier run (same store, as many questions or more)
        reference = (load_json(out, "search") or {}).get("mapped", {}).get("exact")
        if not reference or len(reference["full"]) < args.recall_queries:
            raise SystemExit(f"{out}/search.json has no exact top-30 for {args.recall_queries} questions")
        reference = {name: top[: args.recall_queries] for name, top in reference.items()}
    res["mapped"] = run_worker(
        args,
        {"name": "mapped", "index": index, "mode": "mapped", "queries": args.queries,
         "recall_queries": args.recall_queries, "reference": reference},
    )  # fmt: skip
    if reference:
        res["mapped"]["exact"], res["reused_reference"] = reference, True
    if not args.skip_ram:
        res["ram"] = run_worker(
            args, {"name": "ram", "index": index, "mode": "ram", "queries": args.baseline_queries}
        )
    res["store_bytes"] = (data / "index" / "vectors.npy").stat().st_size
    m = res["mapped"]
    log(
        f"mapped: VmRSS {m['mem_searched']['VmRSS']:.0f} MiB, p50 full {m['latency']['full']['p50_ms']:.0f} ms, "
        f"recall@30 {m['recall']}"
    )
    save_json(out, "search", res)


# ---------------------------------------------------------------------------------------- sweep
class _StageTimer:
    """Wall time spent in the faiss backend's stages (faiss search, candidates, exact rerank), summed."""

    def __init__(self, backend) -> None:
        self.backend, self.seconds = backend, {"faiss": 0.0, "candidates": 0.0, "rerank": 0.0}
        index = backend._search_index()
        timer = self

        class _Timed:  # the faiss index, its search timed
            def search(self, x, k):
                t0 = time.perf_counter()
                result = index.search(x, k)
                timer.seconds["faiss"] += time.perf_counter() - t0
                return result

        backend._search_index = lambda: _Timed()
        for stage in ("candidates", "rerank"):
            setattr(backend, f"_{stage}", self._timed(stage, getattr(backend, f"_{stage}")))

    def _timed(self, stage: str, fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            result = fn(*a, **kw)
            self.seconds[stage] += time.perf_counter() - t0
            return result

        return run

    def restore(self) -> None:
        for attr in ("_search_index", "_candidates", "_rerank"):
            vars(self.backend).pop(attr, None)


def sweep(args: argparse.Namespace) -> None:
    """faiss search settings (nprobe, hits a query token, reranked candidates) against recall@30 and latency,
    on the mapped index, with ``search``'s exact top-30 as the reference (no exact pass again)."""
    from jmlr_hf.retriever import DocumentIndex

    out, data = _paths(args)
    reference = (load_json(out, "search") or {}).get("mapped", {}).get("exact")
    if not reference:
        raise SystemExit(f"{out}/search.json has no exact reference: run the search phase first")
    n = len(reference["full"])
    texts = questions(n)
    index = DocumentIndex.load(data / "index", retriever_for_queries(), allow_stale=True)
    rows = []
    for setting in args.settings:
        nprobe, tpq, rerank = (int(x) for x in setting.split(","))
        backend = index.backend
        backend.nprobe, backend.tokens_per_query_token, backend.max_rerank = nprobe, tpq, rerank
        backend.index.nprobe = nprobe
        row: dict[str, Any] = {"nprobe": nprobe, "tokens_per_query_token": tpq, "max_rerank": rerank}
        for name in SETTINGS:
            index.retriever.config.query_max_length = SETTINGS[name]
            index.search(texts[:2], k=K)  # warm up
            found, times, encode_times = [], [], []
            stages = _StageTimer(backend)
            for text in texts:
                t0 = time.perf_counter()
                encoded = encode(index.retriever, [text], name)
                encode_times.append(time.perf_counter() - t0)
                hits = index.search_encoded(encoded, K)[1][0].tolist()
                times.append(time.perf_counter() - t0)  # query encoding included
                found.append(hits)
            stages.restore()
            row[name] = {
                "recall": recall(found, reference[name]),
                "p50_ms": 1000 * float(np.median(times)),
                "encode_p50_ms": 1000 * float(np.median(encode_times)),
                "stage_mean_ms": {k: 1000 * v / len(texts) for k, v in stages.seconds.items()},
            }
        log(json.dumps(row))
        rows.append(row)
    save_json(out, "sweep", {"queries": n, "rows": rows})


# ---------------------------------------------------------------------------------------- candidates
def candidates(args: argparse.Namespace) -> None:
    """Why recall at scale costs reranking: for ``search``'s questions and exact top-30, per faiss setting
    (nprobe, hits a query token) and question: how many passages the hits reach, how much of the exact
    top-30 is among them, where the approximate MaxSim that prunes them ranks it (the reranked count each
    question needs to keep all of it, and the recall at 512 ... 4,096 reranked), and the exact 30th score
    against the sum of every query token's last hit (the approximate score's bound for a passage no query
    token reached). Also how alike the store's token vectors are (cosine of random pairs)."""
    from jmlr_hf.retriever import DocumentIndex

    out, data = _paths(args)
    reference = (load_json(out, "search") or {}).get("mapped", {}).get("exact")
    if not reference:
        raise SystemExit(f"{out}/search.json has no exact reference: run the search phase first")
    texts = questions(len(reference["full"]))
    index = DocumentIndex.load(data / "index", retriever_for_queries(), allow_stale=True)
    backend, store = index.backend, index.store
    rng = np.random.default_rng(0)
    sample = store.take_tokens(np.sort(rng.choice(store.num_tokens, 20_000, replace=False))).float()
    pair_cos = (sample[:10_000] * sample[10_000:]).sum(1)
    mean_dir = torch.nn.functional.normalize(sample.mean(0), dim=0)
    res: dict[str, Any] = {
        "queries": len(texts),
        "num_tokens": store.num_tokens,
        "num_passages": store.num_passages,
        "random_pair_cosine_mean": float(pair_cos.mean()),
        "mean_direction_cosine_mean": float((sample @ mean_dir).mean()),
        "rows": [],
    }
    budgets = (512, 1024, 2048, 4096)
    for setting in args.settings:
        nprobe, tpq = (int(x) for x in setting.split(","))
        backend.nprobe, backend.tokens_per_query_token = nprobe, tpq
        backend.index.nprobe = nprobe
        row: dict[str, Any] = {"nprobe": nprobe, "tokens_per_query_token": tpq}
        for name in SETTINGS:
            per_q = []
            for text, ref in zip(texts, reference[name]):
                q, qmask = encode(index.retriever, [text], name)
                rows = q[0][qmask[0].bool()]
                sims, ids = backend.index.search(
                    np.ascontiguousarray(rows.float().numpy()), backend.hits_per_token(len(rows))
                )
                cands, score = backend.approximate_scores(store, rows, sims, ids)
                ref = np.asarray(ref, dtype=np.int64)
                where = np.searchsorted(cands, ref).clip(max=len(cands) - 1)
                reached = cands[where] == ref
                order = np.argsort(-score, kind="stable")
                rank = np.empty(len(cands), dtype=np.int64)
                rank[order] = np.arange(len(cands))
                ref_rank = np.where(reached, rank[where], len(cands))  # not reached: never reranked
                exact = backend._rerank(store, rows[None], torch.ones(1, len(rows), dtype=torch.bool), ref)
                n_hits = (ids >= 0).sum(1)
                last = sims[np.arange(len(sims)), np.maximum(n_hits - 1, 0)]
                per_q.append({
                    "candidates": len(cands),
                    "reached": float(reached.mean()),
                    "needed": int(ref_rank.max()) + 1,
                    **{f"recall_{b}": float((ref_rank < b).mean()) for b in budgets},
                    "exact_30th": float(exact.min()),
                    "last_hit_sum": float(last[n_hits > 0].sum()),
                    "query_tokens": len(rows),
                })  # fmt: skip
            needed = np.array([r["needed"] for r in per_q])
            row[name] = {
                "candidates_median": float(np.median([r["candidates"] for r in per_q])),
                "reached": float(np.mean([r["reached"] for r in per_q])),
                "needed_median": float(np.median(needed)),
                "needed_p90": float(np.percentile(needed, 90)),
                "needed_max": int(needed.max()),
                **{f"recall_{b}": float(np.mean([r[f"recall_{b}"] for r in per_q])) for b in budgets},
                "exact_30th_per_token": float(np.mean([r["exact_30th"] / r["query_tokens"] for r in per_q])),
                "last_hit_per_token": float(np.mean([r["last_hit_sum"] / r["query_tokens"] for r in per_q])),
                "questions": per_q,
            }
        log(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "questions"} if isinstance(v, dict) else v)
                        for k, v in row.items()}))  # fmt: skip
        res["rows"].append(row)
    save_json(out, "candidates", res)


# ---------------------------------------------------------------------------------------- growth
def growth(args: argparse.Namespace) -> None:
    """Does a search process keep growing? One fresh process: the mapped index, ``--queries`` different
    full-length questions searched one by one (``index.search([q], k=30)``, query encoding included),
    private memory (RssAnon) every ``--every`` searches. Run with ``PYTHONPATH=<other checkout>/src`` to
    measure another version of the library the same way (``--label`` names it)."""
    import jmlr_hf
    from jmlr_hf import DocumentIndex

    out, data = _paths(args)
    retriever = retriever_for_queries()
    index = DocumentIndex.load(data / "index", retriever, allow_stale=True)
    texts = questions(args.queries)
    index.search(texts[:1], k=K)
    start = mem_stats()["RssAnon"]
    points, t0 = [], time.perf_counter()
    for i, text in enumerate(texts, 1):
        index.search([text], k=K)
        if i % args.every == 0:
            points.append({"searches": i, "rss_anon_growth_mib": round(mem_stats()["RssAnon"] - start, 1)})
            log(f"{args.label}: {points[-1]}")
    record = {
        "label": args.label,
        "library": str(Path(jmlr_hf.__file__).parent),
        "queries": len(texts),
        "seconds": time.perf_counter() - t0,
        "rss_anon_start_mib": start,
        "points": points,
    }
    save_json(out, f"growth_{args.label}", record)


# ---------------------------------------------------------------------------------------- replicas
def replicas(args: argparse.Namespace) -> None:
    """Does replicating real vectors change recall behaviour? At the size of the real check (10,000
    passages), faiss recall@30 against exact on the real passages and on the first 1/copies of them
    replicated ``--copies`` times with the ``synth`` noise, at several search settings."""
    import pyarrow.parquet as pq
    from safetensors import safe_open

    from jmlr_hf import DocumentIndex

    out, _ = _paths(args)
    src = Path(args.source)
    n, copies = args.check_passages, args.copies
    with safe_open(str(src / "vectors.safetensors"), "pt") as f:
        doclens = f.get_tensor("doclens").numpy().astype(np.int64)[:n]
        real = f.get_slice("vectors")[: int(doclens.sum())]
    table = pq.read_table(src / "passages.parquet").slice(0, n).to_pydict()
    retriever = retriever_for_queries()
    texts = questions(args.check_queries)
    encoded = {name: encode(retriever, texts, name) for name in SETTINGS}
    m = n // copies
    m_tok = int(doclens[:m].sum())
    rng = np.random.default_rng(args.seed)
    noisy = []
    for _ in range(copies):  # as synth makes its copies
        noisy.append(torch.from_numpy(noisy_copy(real[:m_tok], args.noise, rng)).to(torch.bfloat16))
    stores = {
        "real": (real, doclens),
        "replicated": (torch.cat(noisy), np.tile(doclens[:m], copies)),
    }
    rows: dict[str, dict] = {}
    for store_name, (vectors, lengths) in stores.items():
        index = DocumentIndex.from_vectors(
            {k: v[: len(lengths)] for k, v in table.items()}, vectors, lengths, retriever, backend="faiss"
        )
        backend = index.backend
        res: dict[str, Any] = {"passages": len(lengths), "tokens": int(lengths.sum()), "nlist": backend.nlist}
        for name, enc in encoded.items():
            ref = exact_top(index.store, enc)
            for setting in args.settings:
                nprobe, tpq, rerank = (int(x) for x in setting.split(","))
                backend.nprobe, backend.tokens_per_query_token, backend.max_rerank = nprobe, tpq, rerank
                backend.index.nprobe = nprobe
                _, found = index.search_encoded(enc, K)
                res.setdefault(setting, {})[name] = recall(found.tolist(), ref)
        log(f"{store_name}: {json.dumps(res)}")
        rows[store_name] = res
    save_json(
        out,
        "replicas",
        {"copies": copies, "noise": args.noise, "queries": len(texts), "settings": args.settings, **rows},
    )


# ---------------------------------------------------------------------------------------- compact
def compact(args: argparse.Namespace) -> None:
    from jmlr_hf.retriever.residual import Bf16Bits, ResidualCodec, ResidualStore
    from jmlr_hf.retriever.store import bf16_from_bits, map_npy

    out, data = _paths(args)
    index = data / "index"
    bits = map_npy(index / "vectors.npy", random_access=False)
    doclens = np.load(index / "doclens.npy")
    n_tok = len(bits)
    n_centroids = args.centroids or None
    sample_tokens = min(args.sample_tokens, n_tok)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(n_tok, size=sample_tokens, replace=False))
    t0 = time.perf_counter()
    sample = bf16_from_bits(np.asarray(bits[rows]))
    if n_centroids is None:
        from jmlr_hf.retriever.residual import default_n_centroids

        n_centroids = default_n_centroids(n_tok)
    n_centroids = min(n_centroids, sample_tokens)
    log(f"fitting {n_centroids} centroids, nbits {args.nbits}, on {sample_tokens:,} sampled tokens")
    codec = ResidualCodec.fit(
        sample,
        n_centroids=n_centroids,
        nbits=args.nbits,
        niter=args.kmeans_niter,
        per_dim=args.buckets == "per-dim",
        scaled=not args.no_scale,
    )
    fit_s = time.perf_counter() - t0
    log(f"fitted in {fit_s:.0f}s; compressing {n_tok:,} tokens")
    t1 = time.perf_counter()
    vectors = Bf16Bits(bits)
    store = ResidualStore.from_vectors(vectors, doclens, codec=codec, folder=data / "compact")
    compress_s = time.perf_counter() - t1
    log(f"compressed in {compress_s:.0f}s")
    files = {p.name: p.stat().st_size for p in (data / "compact").iterdir() if p.is_file()}
    # reconstruction on a sample of tokens
    probe = np.sort(rng.choice(n_tok, size=min(100_000, n_tok), replace=False))
    cos = (store.take_tokens(probe).float() * bf16_from_bits(np.asarray(bits[probe])).float()).sum(1)
    reference = (load_json(out, "search") or {}).get("mapped", {}).get("exact")
    run = run_worker(
        args,
        {"name": "compact", "index": str(index), "mode": "compact", "compact": str(data / "compact"),
         "queries": args.queries, "recall_queries": args.recall_queries, "reference": reference},
    )  # fmt: skip
    res = {
        "nbits": args.nbits,
        "layout": _layout(args),
        "n_centroids": n_centroids,
        "sample_tokens": sample_tokens,
        "kmeans_niter": args.kmeans_niter,
        "fit_s": fit_s,
        "compress_s": compress_s,
        "files": files,
        "bytes_per_token": store.bytes_per_token,
        "disk_bytes_per_token": (files["codes.npy"] + files["residuals.npy"]) / n_tok,
        "codec_bytes": files["codec.safetensors"],
        "cosine_mean": float(cos.mean()),
        "cosine_p05": float(cos.quantile(0.05)),
        "reference": "search.json exact top-30 (bf16)"
        if reference
        else "exact top-30 on decompressed vectors",
        "run": run,
    }
    log(
        f"{res['bytes_per_token']:.0f} B/token, cosine {res['cosine_mean']:.3f}, recall@30 {run.get('recall')}"
    )
    default = args.nbits == 2 and args.buckets == "per-dim" and not args.no_scale
    name = (
        "compact"
        if default
        else f"compact_nbits{args.nbits}"
        + ("" if args.buckets == "per-dim" else "_pooled")
        + ("_noscale" if args.no_scale else "")
    )
    save_json(out, name, res)


def _layout(args: argparse.Namespace) -> str:
    buckets = "per-dimension buckets" if args.buckets == "per-dim" else "pooled buckets"
    scale = "no scale" if args.no_scale else "float16 scale"
    return f"{buckets} of the {'raw' if args.no_scale else 'unit-norm'} residual, {scale}"


# ---------------------------------------------------------------------------------------- two-proc
def two_proc(args: argparse.Namespace) -> None:
    out, data = _paths(args)
    index = str(data / "index")
    stop = Path(out) / "_stop_first"
    stop.unlink(missing_ok=True)
    first_result = Path(out) / "_worker_first.json"
    ready = first_result.with_suffix(".ready")
    ready.unlink(missing_ok=True)
    job = {"name": "first", "index": index, "mode": "mapped", "queries": args.queries, "hold": str(stop)}
    job["result"] = str(first_result)
    cmd = [sys.executable, str(SCRIPT), "worker", "--out", str(out), "--job", json.dumps(job)]
    log("first process: maps the index and searches, then holds it")
    first = subprocess.Popen(cmd)
    try:
        while not ready.exists():
            if first.poll() is not None:
                raise RuntimeError("the first process ended early")
            time.sleep(0.5)
        second = run_worker(
            args,
            {
                "name": "second",
                "index": index,
                "mode": "mapped",
                "queries": args.queries,
                "other_pid": first.pid,
            },
        )
    finally:
        stop.write_text("stop")
        first.wait(timeout=120)
    res: dict[str, Any] = {
        "first": json.loads(first_result.read_text(encoding="utf-8")),
        "second": second,
        "store_bytes": (data / "index" / "vectors.npy").stat().st_size,
        "faiss_bytes": (data / "index" / "faiss.index").stat().st_size,
    }
    store_mib = res["store_bytes"] / 2**20
    res["second_uss_share_of_store"] = second["mem_searched"]["USS"] / store_mib
    # what the index adds to the second process: its USS after searching minus before loading the index
    res["second_added_uss_mib"] = second["mem_searched"]["USS"] - second["mem_retriever"]["USS"]
    res["second_added_share_of_store"] = res["second_added_uss_mib"] / store_mib
    log(
        f"second process: USS {second['mem_searched']['USS']:.0f} MiB = {res['second_uss_share_of_store']:.1%} of the store"
    )
    res["refresh"] = refresh_split(args, out)
    save_json(out, "two_proc", res)


def refresh_split(args: argparse.Namespace, out: Path) -> dict:
    """Encoding into a folder by 2 processes (torch.distributed, gloo) against 1 process with both threads."""
    work = out / "_refresh"
    res: dict[str, Any] = {"passages": args.refresh_passages}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPT), "refresh-worker",
           "--out", str(out), "--work", str(work / "two"), "--refresh-passages", str(args.refresh_passages)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    res["two_wall_s"] = time.perf_counter() - t0
    res["two"] = [json.loads((work / "two" / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(2)]
    cmd = [sys.executable, str(SCRIPT), "refresh-worker", "--out", str(out), "--work", str(work / "one"),
           "--refresh-passages", str(args.refresh_passages)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    res["one_wall_s"] = time.perf_counter() - t0
    res["one"] = json.loads((work / "one" / "rank0.json").read_text(encoding="utf-8"))
    log(f"refresh: 2 processes {[r['build']['passages_encoded'] for r in res['two']]} passages each")
    return res


def refresh_worker(args: argparse.Namespace) -> None:
    """One process of the refresh split: build the index of the first passages into a folder."""
    import pyarrow.parquet as pq

    from jmlr_hf import DocumentIndex

    distributed = "RANK" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if distributed else 0
    retriever = retriever_for_queries()
    table = pq.read_table(Path(args.source) / "passages.parquet").slice(0, args.refresh_passages).to_pydict()
    corpus = [
        {"id": p, "title": t, "text": x}
        for p, t, x in zip(table["passage_id"], table["title"], table["text"])
    ]
    work = Path(args.work)
    t0 = time.perf_counter()
    index = DocumentIndex.build(corpus, retriever, backend="exact", folder=work / "index")
    record = {
        "build": index.last_encode_stats,
        "seconds": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
    }
    record["num_passages"] = index.num_passages
    work.mkdir(parents=True, exist_ok=True)
    (work / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    if distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------- report
def _stages(row: dict) -> str:
    stage = row.get("stage_mean_ms")
    if not stage:
        return "-"
    return (
        f"{row['encode_p50_ms']:.0f}, {stage['faiss']:.0f}, {stage['candidates']:.0f}, {stage['rerank']:.0f}"
    )


def candidates_table(cd: dict, other: dict | None) -> list[str]:
    """The ``candidates`` phase's table (``other``: the same phase on another store, e.g. the real 10k)."""
    lines = [
        f"Where the exact top-30 sits among the candidates ({cd['queries']} questions; {cd['date']}, "
        f"`{cd['command']}`): the passages the faiss hits reach, the share of the exact top-30 among them, how "
        "many passages must be reranked (ranked by the approximate MaxSim that prunes candidates) to keep all "
        "of it, recall@30 with 512 / 1,024 / 2,048 / 4,096 reranked, and per query token the exact 30th score "
        "against the similarity of the token's last hit:",
        "",
        "| store | nprobe, hits | query | candidates (median) | top-30 reached | reranked needed: median / p90 / max "
        "| recall@30 at 512 / 1k / 2k / 4k reranked | 30th score / last hit, a query token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for data in (cd, other):
        if not data:
            continue
        label = f"{data['num_passages']:,} passages ({data['num_tokens'] / 1e6:.1f}M tokens)"
        for row in data["rows"]:
            for name in SETTINGS:
                r = row[name]
                lines.append(
                    f"| {label} | {row['nprobe']}, {row['tokens_per_query_token']} | {name} | "
                    f"{r['candidates_median']:,.0f} | {r['reached']:.3f} | {r['needed_median']:,.0f} / "
                    f"{r['needed_p90']:,.0f} / {r['needed_max']:,} | "
                    + " / ".join(f"{r[f'recall_{b}']:.3f}" for b in (512, 1024, 2048, 4096))
                    + f" | {r['exact_30th_per_token']:.3f} / {r['last_hit_per_token']:.3f} |"
                )
    lines.append("")
    for data in (cd, other):
        if data:
            lines.append(
                f"- {data['num_passages']:,} passages: cosine of random pairs of token vectors "
                f"{data['random_pair_cosine_mean']:.3f}; of a token vector to their mean direction "
                f"{data['mean_direction_cosine_mean']:.3f}."
            )
    return [*lines, ""]


def report(args: argparse.Namespace) -> None:
    out, _ = _paths(args)
    r = {name: load_json(out, name) for name in ("synth", "build", "search", "compact", "two_proc")}
    others = {p.stem: load_json(out, p.stem) for p in sorted(out.glob("compact_nbits*.json"))}
    lines = [SECTION, "", f"Machine: {machine_description()}. Report: {_now()}.", ""]
    for name, rec in {**r, **others}.items():
        if rec:
            lines.append(f"- `{name}`: {rec['date']}, `{rec['command']}`")
    lines.append("")
    s, b, se, c, t = r["synth"], r["build"], r["search"], r["compact"], r["two_proc"]

    def goal(ok: bool) -> str:
        return "met" if ok else "**not met**"

    if s:
        lines += [
            f"Store: the real NGC token vectors ({s['tokens'] // s['copies']:,} of dim {s['dim']}) replicated "
            f"{s['copies']}x with gaussian noise (sigma {s['noise']} a dimension, re-normalized; cosine to the real "
            f"vector {s['noisy_vs_real_cosine_mean']:.3f}): **{s['tokens']:,} token vectors, {s['passages']:,} "
            f"passages**. Noise check at {s['check_passages']:,} real passages, {s['check_queries']} MedQA questions: "
            f"faiss recall@30 against exact {s['real']['faiss_recall@30']:.3f} on the real vectors, "
            f"{s['noisy']['faiss_recall@30']:.3f} on their noisy copy (the noisy exact top-30 keeps "
            f"{s['noisy_exact_top30_overlap_with_real']:.1%} of the real one).",
            "",
        ]
    lines += ["| measure | value | goal |", "|---|---|---|"]
    if b:
        lines.append(
            f"| build apart from encoding (store files + faiss, nlist {b['nlist']}) | {b['build_s']:.0f} s "
            f"(faiss {b['faiss_s']:.0f} s) | |"
        )
        lines.append(
            f"| bytes on disk a token (vectors + faiss index + rest) | {b['disk_bytes_per_token']:.0f} "
            f"({b['vectors_bytes_per_token']:.0f} + {b['faiss_bytes_per_token']:.0f} + ...) | |"
        )
    if se:
        m = se["mapped"]
        gib = m["mem_searched"]["VmRSS"] / 1024
        lines.append(
            f"| search process, store mapped: VmRSS after {m['latency']['full']['n']} x 2 searches "
            f"(RssAnon / RssFile, of it vectors.npy; USS) | {gib:.2f} GiB ({m['mem_searched']['RssAnon']:.0f} / "
            f"{m['mem_searched']['RssFile']:.0f}, {m['mem_searched']['mapped_Rss']:.0f} MiB; "
            f"{m['mem_searched']['USS']:.0f} MiB) | at most 3 GB: {goal(gib * 2**30 <= 3e9)} |"
        )
        if "ram" in se:
            ram = se["ram"]["mem_searched"]
            lines.append(
                f"| baseline, vectors read into RAM: VmRSS (RssAnon) | {ram['VmRSS'] / 1024:.2f} GiB "
                f"({ram['RssAnon'] / 1024:.2f} GiB) | |"
            )
        for name, label in (("full", "full-length questions"), ("32", "32-token queries")):
            lat = m["latency"][name]
            ok = lat["p50_ms"] <= 60
            lines.append(
                f"| search p50 / p95 with query encoding, {label} | {lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} ms | "
                f"p50 at most 60 ms: {goal(ok)} |"
            )
            if "ram" in se and "latency" in se["ram"]:
                base = se["ram"]["latency"][name]
                lines.append(
                    f"| (baseline in RAM, {label}) | {base['p50_ms']:.0f} / {base['p95_ms']:.0f} ms | |"
                )
        for name, label in (("full", "full-length"), ("32", "32-token")):
            rec = m["recall"][name]
            lines.append(
                f"| recall@30 against exact MaxSim over the whole store, {se['recall_queries']} {label} questions | "
                f"{rec:.3f} | at least 0.98: {goal(rec >= 0.98)} |"
            )
        sw = load_json(out, "sweep")
        for name, label in (("full", "full-length"), ("32", "32-token")) if sw else ():
            ok = [w for w in sw["rows"] if w[name]["recall"] >= 0.98]
            best = min(ok, key=lambda w: w[name]["p50_ms"]) if ok else None
            lines.append(
                f"| fastest `sweep` setting with recall@30 >= 0.98, {label} | "
                + (
                    f"{best[name]['p50_ms']:.0f} ms p50, recall {best[name]['recall']:.3f} (nprobe {best['nprobe']}, "
                    f"{best['tokens_per_query_token']} hits, {best['max_rerank']} reranked) | p50 at most 60 ms with "
                    f"recall at least 0.98: {goal(best[name]['p50_ms'] <= 60)} |"
                    if best
                    else "none in the sweep | p50 at most 60 ms with recall at least 0.98: **not met** |"
                )
            )
    if c:
        lines.append(
            f"| compact store ({c['nbits']}-bit residuals, {c.get('layout', 'pooled buckets')}, "
            f"{c['n_centroids']:,} centroids): bytes a token | "
            f"{c['bytes_per_token']:.0f} (+ {c['codec_bytes'] / 2**20:.0f} MiB codec) | at most 40: "
            f"{goal(c['bytes_per_token'] <= 40)} |"
        )
        lines.append(f"| compact: cosine of decompressed to bf16 vectors, mean / 5th percentile | "
                     f"{c['cosine_mean']:.3f} / {c['cosine_p05']:.3f} | |")  # fmt: skip
        for name, label in (("full", "full-length"), ("32", "32-token")):
            rec = c["run"]["recall"][name]
            lines.append(
                f"| compact: recall@30 against the bf16 exact, {label} | {rec:.3f} | at least 0.97: {goal(rec >= 0.97)} |"
            )
        lat = c["run"]["latency"]["full"]
        lines.append(
            f"| compact: search p50 / p95, full-length; VmRSS | {lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} ms; "
            f"{c['run']['mem_searched']['VmRSS'] / 1024:.2f} GiB | |"
        )
        lines.append(f"| compact: fit / compress time | {c['fit_s']:.0f} / {c['compress_s']:.0f} s | |")
    for other in others.values():
        rec = other["run"]["recall"]
        lines.append(
            f"| (compact, {other['nbits']}-bit residuals, {other.get('layout', 'pooled buckets')}: "
            f"{other['bytes_per_token']:.0f} B a token, recall@30 "
            f"full / 32-token {rec['full']:.3f} / {rec['32']:.3f}) | | |"
        )
    if t:
        sec = t["second"]["mem_searched"]
        lines.append(
            f"| 2 processes: what loading and searching the index adds to the second's USS, against one store "
            f"({t['store_bytes'] / 2**30:.2f} GiB) | {t['second_added_uss_mib']:.0f} MiB = "
            f"{t['second_added_share_of_store']:.1%} | at most 20%: {goal(t['second_added_share_of_store'] <= 0.2)} |"
        )
        lines.append(
            f"| (the second's whole USS / PSS, with Python, torch and the model) | {sec['USS']:.0f} / "
            f"{sec['Pss']:.0f} MiB = {t['second_uss_share_of_store']:.1%} of the store | |"
        )
        rf = t["refresh"]
        shares = [w["build"]["passages_encoded"] for w in rf["two"]]
        total = rf["two"][0]["num_passages"]
        lines.append(
            f"| 2-process refresh of {total} passages: passages encoded a process | {' / '.join(map(str, shares))} "
            f"| half each: {goal(max(shares) <= -(-total // 2) + 32)} |"
        )
        lines.append(
            f"| refresh wall time: 2 processes x 1 thread / 1 process x {rf['one']['threads']} threads | "
            f"{rf['two_wall_s']:.0f} / {rf['one_wall_s']:.0f} s | |"
        )
    lines.append("")
    if t:
        rf = t["refresh"]
        enc1 = rf["one"]["build"]["seconds"]
        share = max(w["build"]["passages_encoded"] for w in rf["two"]) / rf["two"][0]["num_passages"]
        lines += [
            f"On {os.cpu_count()} CPU cores, two processes cannot encode faster than one process with two threads: "
            f"they share the same cores (measured: {rf['two_wall_s']:.0f} s against {rf['one_wall_s']:.0f} s). "
            f"The split is what scales with GPUs: each process encoded {share:.0%} of the passages, so with N GPUs "
            "a refresh takes about (encoding time on one GPU) / N plus the backend build, which one process does "
            f"(here one process encoded {rf['one']['num_passages']} passages in {enc1:.0f} s).",
            "",
        ]
    if t:
        rf, store_passages = t["refresh"], (b or {}).get("passages") or (s or {}).get("passages")
        share = max(w["build"]["passages_encoded"] for w in rf["two"]) / rf["two"][0]["num_passages"]
        rate = args.gpu_passages_per_s or rf["one"]["num_passages"] / rf["one"]["build"]["seconds"]
        source = "given" if args.gpu_passages_per_s else "this CPU's one-process rate, measured above"
        faiss_s = (b or {}).get("faiss_s") or 0.0
        if store_passages:
            est = ", ".join(
                f"N={n}: {store_passages * (share if n == 2 else 1 / n) / rate / 60:.1f} min"
                for n in (1, 2, 4, 8)
            )
            lines += [
                f"Expected refresh of the {store_passages:,}-passage store with N GPUs, one process each: encoding "
                f"{store_passages:,} x (share of a process: measured {share:.0%} at N=2, 1/N beyond) / "
                f"{rate:.1f} passages/s ({source}) = {est}; plus the faiss build on rank 0 ({faiss_s / 60:.0f} min "
                "in `build`).",
                "",
            ]
        lines += [
            f"The faiss index ({t['faiss_bytes'] / 2**20:.0f} MiB) is read into each process's memory, not mapped: "
            f"{t['faiss_bytes'] / 2**20 / max(t['second_added_uss_mib'], 1):.0%} of what the index adds to the "
            "second process.",
            "",
        ]
    sw = load_json(out, "sweep")
    if sw:
        lines += [
            f"faiss search settings on the mapped store ({sw['queries']} questions a setting, `search`'s exact "
            f"top-30 as the reference; {sw['date']}, `{sw['command']}`):",
            "",
            "| nprobe | hits a query token | reranked | recall@30 full / 32-token | p50 ms full / 32-token "
            "| of it, mean ms full / 32-token: encode, faiss, candidates, rerank |",
            "|---|---|---|---|---|---|",
            *(
                f"| {w['nprobe']} | {w['tokens_per_query_token']} | {w['max_rerank']} | "
                f"{w['full']['recall']:.3f} / {w['32']['recall']:.3f} | {w['full']['p50_ms']:.0f} / {w['32']['p50_ms']:.0f} | "
                + " / ".join(_stages(w[name]) for name in SETTINGS)
                + " |"
                for w in sw["rows"]
            ),
            "",
        ]
    cd = load_json(out, "candidates")
    if cd:
        lines += candidates_table(
            cd, load_json(Path(args.compare_candidates), "candidates") if args.compare_candidates else None
        )
    grow = {p.stem[len("growth_") :]: load_json(out, p.stem) for p in sorted(out.glob("growth_*.json"))}
    if grow:
        lines += [
            "Private memory (RssAnon, MiB) a search process adds over different full-length questions, one "
            "`index.search([q], k=30)` each (`bench/index_scale.py growth`):",
            "",
            "| version | "
            + " | ".join(f"after {p['searches']}" for p in next(iter(grow.values()))["points"])
            + " | time |",
            "|---|" + "---|" * (len(next(iter(grow.values()))["points"]) + 1),
            *(
                f"| {label} ({g['date']}) | "
                + " | ".join(f"+{p['rss_anon_growth_mib']:.0f}" for p in g["points"])
                + f" | {g['seconds']:.0f} s |"
                for label, g in grow.items()
            ),
            "",
        ]
    rp = load_json(out, "replicas")
    if rp:
        real, rep = rp["real"], rp["replicated"]
        lines += [
            f"Replication check ({rp['date']}, `{rp['command']}`): faiss recall@30 against exact at "
            f"{real['passages']:,} real passages ({real['tokens']:,} tokens) and at {rep['passages']:,} passages "
            f"made of the first {rep['passages'] // rp['copies']:,} replicated {rp['copies']}x with sigma "
            f"{rp['noise']} ({rep['tokens']:,} tokens), {rp['queries']} questions:",
            "",
            "| nprobe, hits, reranked | real full / 32-token | replicated full / 32-token |",
            "|---|---|---|",
            *(
                f"| {st} | {real[st]['full']:.3f} / {real[st]['32']:.3f} | {rep[st]['full']:.3f} / {rep[st]['32']:.3f} |"
                for st in rp["settings"]
            ),
            "",
        ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(ROOT / "docs" / "benchmarks.md", section, SECTION)


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="phase", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--out", default="outputs/index_scale", help="results (json) of every phase")
        p.add_argument(
            "--data", default=None, help="big files: synthetic store, index folders (default: --out)"
        )
        p.add_argument("--source", default="/work/real_run/ngc_index", help="the real index (read only)")
        return p

    p = add("synth", "make the >= 20M-token store from the real vectors; check the noise keeps recall")
    p.add_argument("--copies", type=int, default=4)
    p.add_argument(
        "--noise", type=float, default=0.01, help="gaussian sigma a dimension before re-normalizing"
    )
    p.add_argument("--max-passages", type=int, default=None, help="only the first real passages (smoke runs)")
    p.add_argument("--check-passages", type=int, default=10_000)
    p.add_argument("--check-queries", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p = add("build", "DocumentIndex.from_vectors into <data>/index (faiss), timed")
    p.add_argument("--nlist", type=int, default=None)
    for name, help in (("search", "mapped index vs in-RAM baseline: memory, latency, recall"),
                       ("compact", "residual-compressed store: bytes a token, recall vs bf16 exact")):  # fmt: skip
        p = add(name, help)
        p.add_argument(
            "--queries", type=int, default=200 if name == "search" else 50, help="latency questions"
        )
        p.add_argument("--recall-queries", type=int, default=20)
        if name == "search":
            p.add_argument("--baseline-queries", type=int, default=50)
            p.add_argument("--skip-ram", action="store_true", help="no in-RAM baseline")
            p.add_argument(
                "--reuse-reference",
                action="store_true",
                help="the exact top-30 of the last search.json (no exact pass)",
            )
        else:
            p.add_argument("--nbits", type=int, default=2, choices=(1, 2, 4))
            p.add_argument(
                "--centroids", type=int, default=16_384, help="0: ColBERTv2's default (2**16 at 26M)"
            )
            p.add_argument("--sample-tokens", type=int, default=1 << 20)
            p.add_argument("--kmeans-niter", type=int, default=4)
            p.add_argument(
                "--buckets",
                choices=("per-dim", "pooled"),
                default="per-dim",
                help="bucket cutoffs and weights of each dimension (default) or all dimensions pooled (ColBERTv2)",
            )
            p.add_argument(
                "--no-scale",
                action="store_true",
                help="ColBERTv2's buckets of the raw residual, no float16 scale a token (2 bytes less)",
            )
    p = add("sweep", "faiss settings (nprobe, hits a query token, reranked) against recall and latency")
    p.add_argument(
        "--settings", nargs="+", default=["32,512,512", "16,512,512", "32,1024,1024", "64,1024,1024"],
        help="nprobe,tokens_per_query_token,max_rerank",
    )  # fmt: skip
    p = add("candidates", "where the exact top-30 sits among the faiss candidates (why recall costs reranks)")
    p.add_argument(
        "--settings", nargs="+", default=["32,512", "32,2048"], help="nprobe,tokens_per_query_token"
    )
    p = add("growth", "private memory of a search process over many different questions")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--label", default="current", help="names the result (growth_<label>.json)")
    p = add("replicas", "at 10k passages: recall on real passages against replicated ones (synth's noise)")
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--check-passages", type=int, default=10_000)
    p.add_argument("--check-queries", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="+", default=["32,128,128", "32,512,512", "32,2048,2048"])
    p = add("two-proc", "two processes on one node: the second's memory; a 2-process refresh split")
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--refresh-passages", type=int, default=400)
    p = add("report", "markdown section from the phases' json")
    p.add_argument("--write", action="store_true", help="write it into docs/benchmarks.md")
    p.add_argument(
        "--compare-candidates",
        default=None,
        help="another --out whose candidates.json joins the table (real 10k)",
    )
    p.add_argument(
        "--gpu-passages-per-s", type=float, default=None, help="one GPU's encoding rate, for the estimate"
    )
    p = add("worker", argparse.SUPPRESS)
    p.add_argument("--job", required=True)
    p = add("refresh-worker", argparse.SUPPRESS)
    p.add_argument("--work", required=True)
    p.add_argument("--refresh-passages", type=int, default=400)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    phases = {
        "synth": synth,
        "build": build,
        "search": search,
        "compact": compact,
        "sweep": sweep,
        "candidates": candidates,
        "replicas": replicas,
        "growth": growth,
        "two-proc": two_proc,
        "report": report,
        "worker": worker,
        "refresh-worker": refresh_worker,
    }
    phases[args.phase](args)


if __name__ == "__main__":
    main()
