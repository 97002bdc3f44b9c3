#!/usr/bin/env bash
# brig-scan against its peers, in one run on the same files (issue 5):
# throughput on a large real corpus, and recall / false-positive rate on the
# labelled set (tests/labelled/cases.txt), for brig-scan, detect-secrets
# (PyPI) and ripsecrets (crates.io).
#
#   crates/brig-scan/bench/peers.sh [CORPUS_DIR]     (default ~/.cargo/registry/src)
#   LABELLED_ONLY=1 crates/brig-scan/bench/peers.sh  (the labelled set only: seconds, not minutes)
#
# Peers are installed on first use under /tmp: detect-secrets in a venv
# (/tmp/ds-venv), ripsecrets with `cargo install --root /tmp/peers`.
# MB/s = the corpus's bytes (apparent size of every regular file) / wall time,
# the same denominator for every tool; each tool runs once on a warm cache.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
corpus=${1:-$HOME/.cargo/registry/src}
work=$(mktemp -d /tmp/brig-peers.XXXXXX)
trap 'rm -rf "$work"' EXIT

ds=/tmp/ds-venv/bin/detect-secrets
rs=/tmp/peers/bin/ripsecrets
if [ ! -x "$ds" ]; then
  python3 -m venv /tmp/ds-venv && /tmp/ds-venv/bin/pip install -q detect-secrets
fi
if [ ! -x "$rs" ]; then
  cargo install -q ripsecrets --root /tmp/peers
fi
(cd "$root" && cargo build -q --release -p brig-scan --example scan_bench)
bench="$root/target/release/examples/scan_bench"

now() { date +%s.%N; }
if [ -z "${LABELLED_ONLY:-}" ]; then
bytes=$(find "$corpus" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
files=$(find "$corpus" -type f | wc -l)
echo "corpus: $corpus: $files files, $(awk -v b="$bytes" 'BEGIN{printf "%.1f", b/1e6}') MB"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
find "$corpus" -type f -print0 | xargs -0 cat >/dev/null   # warm the page cache

rate() { awk -v b="$bytes" -v t="$1" 'BEGIN{printf "%.1f MB/s (%.1f s)", b/1e6/t, t}'; }

# scan_bench warms up once, then times one scan (its own clock, best_seconds=).
"$bench" "$corpus" 1 >"$work/brig.txt"
brig_t=$(sed -n 's/^best_seconds=//p' "$work/brig.txt")
echo "brig-scan:      $(rate "$brig_t")   [$(head -1 "$work/brig.txt")]"

t0=$(now); "$rs" "$corpus" >"$work/rs.txt" 2>/dev/null || true; t1=$(now)
echo "ripsecrets:     $(rate "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")   [$(wc -l <"$work/rs.txt") lines reported]"

# detect-secrets must run from inside the tree (from inside another git repo it scans nothing).
t0=$(now); (cd "$corpus" && "$ds" scan --all-files . >"$work/ds.json"); t1=$(now)
echo "detect-secrets: $(rate "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")   [$(python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print(sum(len(v) for v in d['results'].values()), 'secrets')" "$work/ds.json")]"

fi

# ---- labelled set: one directory per case; a case is flagged if a tool reports anything in it.
cases="$work/cases"
python3 - "$here/../tests/labelled/cases.txt" "$cases" <<'PY'
import os, sys
src, out = sys.argv[1], sys.argv[2]
case = None
for line in open(src, encoding="utf-8").read().splitlines(keepends=True):
    if line.startswith("### "):
        label, cid, name = line[4:].split()
        case = os.path.join(out, label, cid, name)
        os.makedirs(os.path.dirname(case), exist_ok=True)
        open(case, "w").close()
    elif case:
        with open(case, "a", encoding="utf-8") as f:
            f.write(line)
PY
"$bench" --json "$cases" >"$work/l-brig.json"
"$rs" "$cases" >"$work/l-rs.txt" 2>/dev/null || true
(cd "$cases" && "$ds" scan --all-files . >"$work/l-ds.json")
python3 - "$cases" "$work" <<'PY'
import json, os, re, sys
cases, work = sys.argv[1], sys.argv[2]
def case_of(path):
    p = os.path.relpath(os.path.join(cases, path), cases).split(os.sep)
    return (p[0], p[1]) if len(p) >= 3 else None
all_cases = {(l, c) for l in ("positive", "negative") for c in os.listdir(os.path.join(cases, l))}
flagged = {
    "brig-scan": {case_of(f["path"]) for f in json.load(open(f"{work}/l-brig.json"))["findings"]},
    "ripsecrets": {case_of(os.path.relpath(m.group(1), cases)) for m in
                   (re.match(r"^(.*?):\d+:", l) for l in open(f"{work}/l-rs.txt", errors="replace")) if m},
    "detect-secrets": {case_of(p) for p in json.load(open(f"{work}/l-ds.json"))["results"]},
}
pos = {c for c in all_cases if c[0] == "positive"}
neg = all_cases - pos
print(f"labelled set: {len(pos)} positives, {len(neg)} negatives")
for tool, got in flagged.items():
    tp, fp = len(got & pos), len(got & neg)
    print(f"  {tool:15} recall {tp / len(pos):.3f} ({tp}/{len(pos)})   false-positive rate {fp / len(neg):.3f} ({fp}/{len(neg)})")
PY
