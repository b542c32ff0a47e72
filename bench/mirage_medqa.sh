#!/usr/bin/env bash
# MIRAGE medqa with the embedded SmolLM2: closed-book and RAG over (a prefix of) the NGC guidelines.
# Usage: bash bench/mirage_medqa.sh [NUM_QUESTIONS] [NUM_NGC_DOCUMENTS]   (results in outputs/mirage/)
# METHODS="loglik option" also scores whole options (slower); K and MAX_CONTEXT set the RAG prompt.
# Needs JMLR_SHARED_DATA (default ../shared/data) and the package installed (make setup).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${JMLR_SHARED_DATA:-../shared/data}"
N="${1:-150}"
DOCS="${2:-150}"
K="${K:-3}"
MAX_CONTEXT="${MAX_CONTEXT:-512}"
OUT=outputs/mirage
JMLR="${JMLR:-.venv/bin/jmlr}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
head -n "$DOCS" "$DATA/ngc/ngc_guidelines.jsonl" > "$OUT/ngc_subset.jsonl"
/usr/bin/time -f "index: %e s" "$JMLR" index --corpus "$OUT/ngc_subset.jsonl" --output "$OUT/ngc_index" -q
for method in ${METHODS:-loglik}; do
  "$JMLR" eval --data "$DATA/mirage/benchmark.json" --format mirage --mirage-subset medqa --limit "$N" \
    --mode closed-book --method "$method" --output "$OUT/closed_book_$method.json" -q
  "$JMLR" eval --data "$DATA/mirage/benchmark.json" --format mirage --mirage-subset medqa --limit "$N" \
    --mode rag --index "$OUT/ngc_index" --k "$K" --max-context-tokens "$MAX_CONTEXT" --method "$method" \
    --output "$OUT/rag_ngc_$method.json" -q
done
