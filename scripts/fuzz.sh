#!/usr/bin/env bash
# Coverage-guided fuzzing of the host's decoders of guest-controlled bytes with AFL++ (`cargo afl`, on
# the stable toolchain). Builds the targets of `fuzz/` (instrumented, release with overflow checks) and
# runs each for N minutes, one after the other (one fuzzer at a time: it takes a whole core), starting
# from the committed seed corpus `fuzz/corpus/<target>`.
#
#   scripts/fuzz.sh [--minutes N] [--update-corpus] [TARGET...]
#                                     targets: frames resync greeting mux agent console (default: all)
#
# --update-corpus: afterwards, minimise each target's queue (afl-cmin) and add the smallest inputs it
# keeps (at most 1 KiB each) to fuzz/corpus/<target>, named by content hash, until that directory holds
# 64 files or 32 KiB: a small seed corpus to commit.
#
# Exit status: 0 when no target found a crash or a hang; 1 otherwise (the inputs are listed: replay one
# with `target/afl/release/<target> < <file>`, then add it as a regression test); 2 on usage or setup
# errors. Figures (execs, corpus, edges, crashes, hangs) go to stdout, AFL++'s output to
# $FUZZ_OUT/<target> (default target/afl/out). Needs `cargo install cargo-afl` and `cargo afl config
# --build` once (builds AFL++ with gcc/make; no LLVM or nightly needed).
set -uo pipefail

ALL="frames resync greeting mux agent console"
MINUTES=5
UPDATE=0
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES="${2:-}"; shift 2 || break ;;
        --update-corpus) UPDATE=1; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "usage: $0 [--minutes N] [--update-corpus] [TARGET...]" >&2; exit 2 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
case "$MINUTES" in ''|*[!0-9]*|0) echo "--minutes wants a positive whole number" >&2; exit 2 ;; esac
[ ${#TARGETS[@]} -eq 0 ] && read -r -a TARGETS <<< "$ALL"
for t in "${TARGETS[@]}"; do
    case " $ALL " in *" $t "*) ;; *) echo "unknown target $t (targets: $ALL)" >&2; exit 2 ;; esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="$ROOT/target/afl"
OUT="${FUZZ_OUT:-$CARGO_TARGET_DIR/out}"
if ! cargo afl --version >/dev/null 2>&1; then
    echo "cargo afl is missing: cargo install cargo-afl && cargo afl config --build" >&2
    exit 2
fi

# The targets never boot a VM: skip building and embedding the guest agent.
echo "== building the fuzz targets"
if ! (cd "$ROOT/fuzz" && SMOLVM_EMBED_AGENT=0 cargo afl build --release --quiet); then
    echo "building the fuzz targets failed" >&2
    exit 2
fi

# A core dump handler (systemd, apport) would make AFL++ refuse to start; fuzzing has no use for cores.
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1
# Rust's panic hook prints; AFL++ sees the abort that afl::fuzz! turns every panic into.
export AFL_SUPPRESS_OUTPUT=1

# Minimises the queue of target $1 (output dir $2) and adds small new inputs to its seed corpus.
update_corpus() {
    local t="$1" out="$2" corpus="$ROOT/fuzz/corpus/$1" f h used files
    rm -rf "$out/cmin"
    # The shell afl-cmin (the Python one that `cargo afl cmin` runs records no coverage from these
    # persistent-mode targets), from the AFL++ that `cargo afl config --build` made.
    local bin cmin
    bin=$(find "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs" -path '*/afl/bin/afl-cmin.bash' | sort | tail -n 1)
    cmin="${bin:-afl-cmin.bash}"
    if ! AFL_PATH="$(dirname "$cmin")" "$cmin" -i "$out/default/queue" -o "$out/cmin" -t 5000 \
        -- "$CARGO_TARGET_DIR/release/$t" >"$out/cmin.log" 2>&1; then
        echo "$t: afl-cmin failed; see $out/cmin.log" >&2
        return
    fi
    used=$(du -cb "$corpus"/* | tail -n 1 | cut -f1)
    files=$(find "$corpus" -type f | wc -l)
    # Smallest first: many small inputs cover more per byte than a few large ones.
    while IFS= read -r f; do
        [ "$(stat -c %s "$f")" -le 1024 ] || continue
        h=$(sha1sum "$f" | cut -c1-16)
        [ -e "$corpus/$h" ] && continue
        used=$((used + $(stat -c %s "$f")))
        files=$((files + 1))
        [ "$used" -le 32768 ] && [ "$files" -le 64 ] || break
        cp "$f" "$corpus/$h"
    done < <(find "$out/cmin" -type f -printf '%s %p\n' | sort -n | cut -d' ' -f2-)
    echo "  corpus $t: $(ls "$corpus" | wc -l) files, $(du -sb "$corpus" | cut -f1) bytes"
}

stat_of() { sed -n "s/^$1 *: *//p" "$2"; }
status=0
printf '%-9s %10s %9s %7s %13s %7s %5s\n' target execs "execs/s" corpus edges crashes hangs
for t in "${TARGETS[@]}"; do
    out="$OUT/$t"
    rm -rf "$out"
    mkdir -p "$out"
    # -V: stop after N minutes. -t: a run longer than 5 s is a hang (the slowest target, console, forks
    # a keeper process; a normal run takes milliseconds even on a loaded machine).
    cargo afl fuzz -i "$ROOT/fuzz/corpus/$t" -o "$out" -V $((MINUTES * 60)) -t 5000 \
        -- "$CARGO_TARGET_DIR/release/$t" >"$out/afl.log" 2>&1
    rc=$?
    stats="$out/default/fuzzer_stats"
    if [ ! -f "$stats" ]; then
        echo "$t: AFL++ did not start (exit $rc); see $out/afl.log:" >&2
        tail -n 20 "$out/afl.log" >&2
        status=1
        continue
    fi
    crashes=$(stat_of saved_crashes "$stats")
    hangs=$(stat_of saved_hangs "$stats")
    printf '%-9s %10s %9s %7s %13s %7s %5s\n' "$t" "$(stat_of execs_done "$stats")" \
        "$(stat_of execs_per_sec "$stats")" "$(stat_of corpus_count "$stats")" \
        "$(stat_of edges_found "$stats")/$(stat_of total_edges "$stats")" "$crashes" "$hangs"
    if [ "${crashes:-0}" != 0 ] || [ "${hangs:-0}" != 0 ]; then
        status=1
        find "$out/default/crashes" "$out/default/hangs" -type f -name 'id:*' | sed 's/^/  finding: /'
    fi
    [ "$UPDATE" = 1 ] && update_corpus "$t" "$out"
done
exit $status
