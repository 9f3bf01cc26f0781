#!/usr/bin/env bash
# Coverage-guided fuzzing of the host's decoders of guest-controlled bytes with AFL++ (`cargo afl`, on
# the stable toolchain). Builds the targets of `fuzz/` (instrumented, release with overflow checks) and
# runs each for N minutes, one after the other (one fuzzer at a time: it takes a whole core), starting
# from the committed seed corpus `fuzz/corpus/<target>`.
#
#   scripts/fuzz.sh [--minutes N] [TARGET...]      targets: frames resync greeting mux agent console
#
# Exit status: 0 when no target found a crash or a hang; 1 otherwise (the inputs are listed: replay one
# with `target/afl/release/<target> < <file>`, then add it as a regression test); 2 on usage or setup
# errors. Figures (execs, corpus, edges, crashes, hangs) go to stdout, AFL++'s output to
# $FUZZ_OUT/<target> (default target/afl/out). Needs `cargo install cargo-afl` and `cargo afl config
# --build` once (builds AFL++ with gcc/make; no LLVM or nightly needed).
set -uo pipefail

ALL="frames resync greeting mux agent console"
MINUTES=5
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES="${2:-}"; shift 2 || break ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "usage: $0 [--minutes N] [TARGET...]" >&2; exit 2 ;;
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
done
exit $status
