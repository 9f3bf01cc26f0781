#!/usr/bin/env bash
# Chaos soak: P worker processes run VM lifecycles through the `smolvm` CLI (create -> start -> exec ->
# env -> cp -> [snapshot + fork] -> stop -> delete) while a fault injector, at random moments, SIGKILLs a
# VMM, SIGKILLs a smolvm process mid-command, deletes a VM's TAP device, fills the data directory's disk
# and holds the state database locked. Afterwards `reconcile` and `cleanup --all` mend what the faults
# broke, every VM still listed must be usable, and an audit must find nothing left: no VMM or smolvm
# process, TAP device, nft rule, file, socket, lock, state row or lease. No lease may ever be in use by
# two live VMMs at once.
#
# Bounded in count and time. Runs as root inside a network namespace it creates (and removes), with
# its own data directory on a small tmpfs and its own socket directory: it never touches other VMs.
# The host's cgroup hierarchies are mounted again in the namespace's mount namespace (`ip netns exec`
# gives it a /sys without them), so every VMM runs in its VM's cgroup as it would outside; the audit
# checks that each VMM sampled was in one and that no group outlives its VM.
# SIGTERM (or INT) to this script ends the run early: workers finish their cycle, then the audit runs.
# SOAK_IMAGE picks the image directory (default: target/tmp/smolvm-images/default; the minimal-kernel
# image default-minimal boots faster and needs no initrd).
#
#   scripts/soak.sh [--workers P] [--cycles N] [--minutes M] [--fault-every S] [--tmpfs-mib MIB]
#
# N is the total number of cycles (split over the workers). Exit status 0 only if the audit is clean.
# Figures go to stdout and, as JSON, to $SOAK_REPORT (default: <work dir>/report.json).
set -uo pipefail

WORKERS=2 CYCLES=4 MINUTES=5 FAULT_EVERY=6 TMPFS_MIB=2048
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) WORKERS="$2"; shift 2 ;;
        --cycles) CYCLES="$2"; shift 2 ;;
        --minutes) MINUTES="$2"; shift 2 ;;
        --fault-every) FAULT_EVERY="$2"; shift 2 ;;
        --tmpfs-mib) TMPFS_MIB="$2"; shift 2 ;;
        *) echo "usage: $0 [--workers P] [--cycles N] [--minutes M] [--fault-every S] [--tmpfs-mib MIB]" >&2; exit 2 ;;
    esac
done
for v in WORKERS CYCLES MINUTES FAULT_EVERY TMPFS_MIB; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "soak: --${v,,} must be a positive integer" >&2; exit 2; }
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SMOLVM="${SMOLVM:-$ROOT/target/debug/smolvm}"
IMAGE="${SOAK_IMAGE:-$ROOT/target/tmp/smolvm-images/default}"

die() { echo "soak: $*" >&2; exit 2; }

# ---------------------------------------------------------------- outside: namespace + tmpfs, re-exec
if [ -z "${SOAK_INSIDE:-}" ]; then
    [ "$(id -u)" = 0 ] || die "needs root (network namespace, TAP devices, tmpfs)"
    for t in ip nft qemu-system-x86_64 jq sqlite3 fallocate; do
        command -v "$t" >/dev/null || die "prerequisite \`$t\` is not installed"
    done
    [ -x "$SMOLVM" ] || die "no smolvm binary at $SMOLVM (cargo build -p smolvm-cli, or set SMOLVM)"
    WORK="$(mktemp -d /tmp/smolvm-soak.XXXXXX)"
    if [ ! -f "$IMAGE/image.json" ]; then
        echo "soak: building the default image into $WORK/img"
        "$SMOLVM" --data-dir "$WORK/img" image build >/dev/null || die "image build failed"
        IMAGE="$WORK/img/images/default"
    fi
    NS="smolvm-soak-$$"
    mkdir -p "$WORK/data"
    mount -t tmpfs -o "size=${TMPFS_MIB}m,mode=0700" soak "$WORK/data" || die "mount tmpfs"
    ip netns add "$NS" || { umount "$WORK/data"; die "ip netns add"; }
    ip -n "$NS" link set lo up
    # The cgroup hierarchies, to mount again inside (see the header).
    awk '$2 ~ "^/sys/fs/cgroup" && $3 ~ /^(tmpfs|cgroup|cgroup2)$/' /proc/self/mounts >"$WORK/cgroup.mounts"
    SOAK_INSIDE=1 WORK="$WORK" IMAGE="$IMAGE" SMOLVM="$SMOLVM" \
        ip netns exec "$NS" "$0" --workers "$WORKERS" --cycles "$CYCLES" --minutes "$MINUTES" \
        --fault-every "$FAULT_EVERY" --tmpfs-mib "$TMPFS_MIB" &
    inner=$!
    # An early end: the workers stop after their cycle and the audit still runs.
    trap 'touch "$WORK/stop"' TERM INT
    while :; do
        wait "$inner"; rc=$?
        # `wait` returns early (status > 128) when a trapped signal arrives; the inner run goes on.
        kill -0 "$inner" 2>/dev/null || break
    done
    trap - TERM INT
    # Whatever the run left (it cleans up itself; this is the last resort on an aborted run).
    for p in $(grep -l -s -- "$WORK" /proc/[0-9]*/cmdline | cut -d/ -f3); do
        [ "$p" != $$ ] && kill -9 "$p" 2>/dev/null
    done
    ip netns del "$NS" 2>/dev/null
    umount "$WORK/data" 2>/dev/null || umount -l "$WORK/data"
    [ "$rc" = 0 ] && [ -z "${SOAK_KEEP:-}" ] && rm -rf "$WORK"
    exit "$rc"
fi

# ---------------------------------------------------------------- inside the namespace
DATA="$WORK/data" SOCK="$WORK/s" EV="$WORK/events"
mkdir -p "$EV" "$SOCK"
trap 'touch "$WORK/stop"' TERM INT
# The host's cgroup hierarchies, in this mount namespace only (v1 hierarchies are shared: mounting one
# with the same controllers attaches the existing one). Generic mount flags are not controllers.
CGROUPS=0
while read -r _ mnt type opts _; do
    case $type in
        tmpfs) mount -t tmpfs -o mode=0755 cgroup_root "$mnt" || die "mount tmpfs at $mnt" ;;
        cgroup2) mkdir -p "$mnt" && mount -t cgroup2 cgroup2 "$mnt" || die "mount cgroup2 at $mnt" ;;
        cgroup)
            ctl="$(tr ',' '\n' <<<"$opts" | grep -vxE 'rw|ro|nosuid|nodev|noexec|relatime|noatime|strictatime|clone_children|xattr' | paste -sd,)"
            # Only the hierarchies VM groups use (a named one without controllers is not needed).
            grep -qxE 'cpu|memory|pids' <(tr ',' '\n' <<<"$ctl") || continue
            mkdir -p "$mnt" && mount -t cgroup -o "$ctl" cgroup "$mnt" || die "mount cgroup ($ctl) at $mnt"
            CGROUPS=1 ;;
    esac
    [ "$type" = cgroup2 ] && grep -qw memory "$mnt/cgroup.controllers" 2>/dev/null && CGROUPS=1
done <"$WORK/cgroup.mounts"
TAG="$(printf %s "$(realpath "$DATA")" | sha256sum | cut -c1-12)"   # dirs::store_tag
# This run's VM groups (named <store tag>-<vm id>, under a `smolvm` parent).
own_groups() { find /sys/fs/cgroup -mindepth 2 -maxdepth 7 -type d -path "*/smolvm/$TAG-*" 2>/dev/null; }
sm() { "$SMOLVM" --data-dir "$DATA" --socket-dir "$SOCK" --backend qemu "$@"; }
BOOT_ARGS="$(jq -r .boot_args "$IMAGE/image.json")"
# The image's files, found in $IMAGE: image.json records absolute paths as seen by whoever built it,
# which may be another data directory's symlink to this cache (a test's temporary one, gone by now).
in_image() { printf '%s/%s' "$IMAGE" "$(basename "$(jq -r ".$1" "$IMAGE/image.json")")"; }
KERNEL="$(in_image kernel)" INITRD="$(in_image initrd)" ROOTFS="$(in_image rootfs)"
# The minimal-kernel image boots its root disk directly: no initrd.
[ "$(jq -r .needs_initrd "$IMAGE/image.json")" = false ] && INITRD=""
DEADLINE=$(( $(date +%s) + MINUTES * 60 ))
export SMOLVM_TEMPLATES=off

# One line per event: `<kind> <detail>`; counted at the end.
note() { echo "$2" >>"$EV/$1"; }
count() { [ -f "$EV/$1" ] && wc -l <"$EV/$1" || echo 0; }

# An error's kind: the step plus the first words of its message, without ids and numbers.
err_kind() { # step, stderr file, exit status
    local msg
    # The error line, not a log line before it (colours stripped); else the first line.
    msg="$(sed -E 's/\x1b\[[0-9;]*m//g' "$2" 2>/dev/null | grep -v '^\s*$' | { grep -m1 -E '^(error|Error)' || true; })"
    [ -n "$msg" ] || msg="$(sed -E 's/\x1b\[[0-9;]*m//g' "$2" 2>/dev/null | grep -v '^\s*$' | head -1)"
    msg="$(sed -E 's/^(error|Error): //; s/[a-z0-9]*w[0-9]+c[0-9]+[a-z0-9-]*/<vm>/g; s/[0-9]+/N/g' <<<"$msg" | cut -c1-90)"
    [ "$3" = 137 ] && msg="killed (SIGKILL)"
    echo "$1: ${msg:-exit status $3}"
}

# Keeps the whole error text (colours stripped, at most 12 lines) of the first error of each kind: kinds
# are cut to 90 characters, which hides the cause at the end of a chain. `example KIND FILE`
example() {
    (
        flock 9
        grep -qxF "== $1" "$EV/error_examples" 2>/dev/null && exit 0
        { echo "== $1"; sed -E 's/\x1b\[[0-9;]*m//g' "$2" 2>/dev/null | grep -v '^\s*$' | head -12; } >>"$EV/error_examples"
    ) 9>>"$EV/error_examples.lock"
}

# Runs one step of worker $W; on failure records its kind. `step NAME cmd...`
step() {
    local name="$1" rc kind; shift
    "$@" >"$EV/stdout.$W" 2>"$EV/stderr.$W"
    rc=$?
    [ "$rc" = 0 ] && return 0
    kind="$(err_kind "$name" "$EV/stderr.$W" "$rc")"
    note errors "$kind"
    [ "$rc" = 137 ] || example "$kind" "$EV/stderr.$W"
    return "$rc"
}

CREATE_ARGS=(--kernel "$KERNEL" ${INITRD:+--initrd "$INITRD"} --rootfs "$ROOTFS" --boot-args "$BOOT_ARGS"
    --mem 256 --vcpus 1 --network tap)

cycle() { # worker, number
    local id="w${W}c$2" fork_id="" ok=1
    if step create sm create --id "$id" "${CREATE_ARGS[@]}"; then note created "$id"; else ok=0; fi
    [ $ok = 1 ] && { step start sm start "$id" || ok=0; }
    [ $ok = 1 ] && check_cgroups
    if [ $ok = 1 ]; then
        if step exec sm exec "$id" -- sh -c 'echo soak-$((6*7))'; then
            grep -qx soak-42 "$EV/stdout.$W" || { note errors "exec: wrong output"; ok=0; }
        else ok=0; fi
    fi
    if [ $ok = 1 ]; then
        if step env-set sm env set "$id" "SOAK_N=$2" && step env-list sm env list "$id"; then
            grep -q "^SOAK_N=$2\$" "$EV/stdout.$W" || { note errors "env: variable missing"; ok=0; }
        else ok=0; fi
    fi
    if [ $ok = 1 ]; then
        head -c 100000 /dev/urandom >"$EV/up.$W"
        if step cp-in sm cp "$EV/up.$W" "$id:/tmp/up" && step cp-out sm cp "$id:/tmp/up" "$EV/down.$W"; then
            cmp -s "$EV/up.$W" "$EV/down.$W" || { note errors "cp: round trip differs"; ok=0; }
        else ok=0; fi
    fi
    if [ $ok = 1 ] && [ $(( $2 % 3 )) = 0 ]; then
        if step snapshot sm snapshot create "$id" "s-$id"; then
            if step fork sm fork "$id" --count 1 --timeout 120 --json; then
                fork_id="$(jq -r '.[0].vm_id' "$EV/stdout.$W" 2>/dev/null)"
                [ -n "$fork_id" ] && note created "$fork_id"
                step fork-exec sm exec "$fork_id" -- true || ok=0
                step fork-delete sm delete "$fork_id" || ok=0
            else ok=0; fi
            # `fork` keeps the snapshot it took (`<id>-fork-<hex>`); without this every third cycle
            # would leave one (memory + disk) and fill the data directory.
            for s in $(sm snapshot list --json 2>/dev/null | jq -r --arg p "$id-fork-" '.[].name | select(startswith($p))'); do
                step fork-snapshot-delete sm snapshot delete "$s" || ok=0
            done
            step snapshot-delete sm snapshot delete "s-$id" || ok=0
        else ok=0; fi
    fi
    [ $ok = 1 ] && { step stop sm stop "$id" || ok=0; }
    # Delete whatever happened before (a failed step must not leave its VM behind); a VM whose create
    # failed is already gone.
    if sm info "$id" >/dev/null 2>"$EV/info.$W" || ! grep -q "not found" "$EV/info.$W"; then
        step delete sm delete "$id" || ok=0
    fi
    [ $ok = 1 ] && note cycles_ok "$id" || note cycles_failed "$id"
}

worker() {
    W="$1"
    local n=0 quota=$(( (CYCLES + WORKERS - $1) / WORKERS ))
    while [ $n -lt $quota ] && [ "$(date +%s)" -lt "$DEADLINE" ] && [ ! -f "$WORK/stop" ]; do
        cycle "$1" "$n"
        n=$((n + 1))
    done
}

# Pids of this run's processes matching a pattern in their command line (never anyone else's).
own_pids() { # pattern (extended regex over the NUL-separated cmdline turned into spaces)
    local p
    for p in $(grep -l -s -- "$WORK" /proc/[0-9]*/cmdline | cut -d/ -f3); do
        tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -Eq -- "$1" && echo "$p"
    done
}

# Any TAP name or MAC in use by two live VMMs at once is a lease handed out twice.
check_leases() {
    local p seen
    seen="$(for p in $(own_pids '^[^ ]*qemu-system'); do
        tr '\0' '\n' 2>/dev/null <"/proc/$p/cmdline" | grep -oE 'ifname=[^,]+|mac=[0-9a-f:]+'
    done | sort | uniq -d)"
    [ -n "$seen" ] && note lease_violations "$(echo $seen)"
    sqlite3 -readonly "$DATA/smolvm.db" "SELECT guest_ip FROM leases WHERE mode = 'tap'
        GROUP BY guest_ip HAVING count(*) > 1" 2>/dev/null | while read -r ip; do
        note lease_violations "db: $ip"; done
    check_cgroups
}

# Every live VMM must run in its VM's group (it enters it before exec); the groups seen are counted.
check_cgroups() {
    [ "$CGROUPS" = 1 ] || return 0
    local p g outside=()
    for p in $(own_pids '^[^ ]*qemu-system'); do
        g="$(grep -m1 -oE "/smolvm/$TAG-[^/]+" "/proc/$p/cgroup" 2>/dev/null)"
        if [ -n "$g" ]; then note vmm_in_cgroup "${g##*/}"; else outside+=("$p"); fi
    done
    [ ${#outside[@]} = 0 ] && return
    # A VMM being killed (by a fault, or a failed start) may already have left its group; one still
    # running outside a second later is a real escape.
    sleep 1
    for p in "${outside[@]}"; do
        grep -q '^State:.*[ZX]' "/proc/$p/status" 2>/dev/null && continue
        tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -q 'qemu-system' || continue
        grep -qE "/smolvm/$TAG-" "/proc/$p/cgroup" 2>/dev/null && continue
        note vmm_outside_cgroup "pid $p: $(tr '\n' ' ' <"/proc/$p/cgroup" 2>/dev/null | cut -c1-200)"
    done
}

fault() {
    local kind pids=() p try
    # A kind with nothing to hit right now (no VMM running, no TAP) gives way to another.
    for try in 1 2 3 4 5 6; do
    case $(( RANDOM % 5 )) in
        0) kind=kill-vmm; pids=($(own_pids '^[^ ]*qemu-system')) ;;
        1) kind=kill-smolvm  # the CLI mid-command (not the console keepers it forks: their own name)
           pids=($(for p in $(own_pids "smolvm .*--data-dir $DATA .* (create|start|delete|stop|fork|snapshot) "); do
               [ "$(cat /proc/$p/comm 2>/dev/null)" = smolvm ] && echo "$p"; done)) ;;
        2) kind=delete-tap; pids=($(ip -o link show type tun 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1)) ;;
        3) kind=fill-disk; pids=(x) ;;
        4) kind=lock-db; pids=(x) ;;
    esac
    [ ${#pids[@]} -gt 0 ] && break
    done
    [ ${#pids[@]} = 0 ] && return
    p="${pids[RANDOM % ${#pids[@]}]}"
    case $kind in
        kill-vmm|kill-smolvm) kill -9 "$p" 2>/dev/null || return ;;
        delete-tap) ip link del "$p" 2>/dev/null || return ;;
        fill-disk)
            local free; free=$(df -B1 --output=avail "$DATA" | tail -1)
            fallocate -l $(( free > 4096 ? free - 4096 : 1 )) "$DATA/.soak-fill" 2>/dev/null
            sleep $(( 2 + RANDOM % 5 )); rm -f "$DATA/.soak-fill" ;;
        lock-db)
            [ -f "$DATA/smolvm.db" ] || return
            { echo "BEGIN EXCLUSIVE;"; sleep $(( 2 + RANDOM % 6 )); echo "COMMIT;"; } \
                | sqlite3 "$DATA/smolvm.db" >/dev/null 2>&1 ;;
    esac
    note faults "$kind"
}

injector() {
    while [ ! -f "$EV/.done" ]; do
        local wait=$(( 1 + RANDOM % (2 * FAULT_EVERY) ))
        while [ $wait -gt 0 ] && [ ! -f "$EV/.done" ]; do sleep 1; wait=$((wait - 1)); done
        [ -f "$EV/.done" ] && break
        fault
        check_leases
    done
}

case "$WORK$IMAGE$KERNEL$ROOTFS$INITRD" in *[[:space:]]*) die "paths must not hold spaces" ;; esac

echo "soak: $WORKERS workers, $CYCLES cycles, at most $MINUTES min, a fault every ~${FAULT_EVERY}s; work dir $WORK"
# Baseline: what one clean create + delete leaves in the namespace (the network layer's own tables).
sm create --id baseline "${CREATE_ARGS[@]}" >/dev/null && sm delete baseline >/dev/null \
    || die "baseline create/delete failed"
nft list ruleset >"$WORK/nft.before"
ip -o link show | awk -F': ' '{print $2}' | sort >"$WORK/links.before"

t0=$(date +%s)
injector & inj=$!
wpids=()
for w in $(seq 1 "$WORKERS"); do worker "$w" & wpids+=($!); done
wait "${wpids[@]}"
touch "$EV/.done"
wait "$inj"
rm -f "$DATA/.soak-fill"
t1=$(date +%s)
check_leases

# ---------------------------------------------------------------- mend, verify, audit
sm reconcile >"$WORK/reconcile.out" 2>&1
sm cleanup --all --json >"$WORK/cleanup.json" 2>"$WORK/cleanup.err" || note errors "cleanup: $(head -1 "$WORK/cleanup.err")"
unusable=()
for id in $(sm list --json | jq -r '.[].vm_id'); do
    # Every VM still listed must work: start it if needed, run a command, then delete it.
    st="$(sm info "$id" --json | jq -r .status)"
    [ "$st" = running ] || sm start "$id" >/dev/null 2>"$EV/start.audit"
    if ! sm exec "$id" -- true >/dev/null 2>"$EV/exec.audit"; then
        unusable+=("$id ($st): $(cat "$EV/start.audit" "$EV/exec.audit" 2>/dev/null | grep -v '^\s*$' | head -3 | tr '\n' ' ' | cut -c1-300)")
    fi
    sm delete "$id" >/dev/null 2>"$EV/stderr.audit" || unusable+=("$id: delete failed: $(head -1 "$EV/stderr.audit")")
done
for s in $(sm snapshot list --json 2>/dev/null | jq -r '.[].name' 2>/dev/null); do
    sm snapshot delete "$s" >/dev/null 2>&1   # snapshots are user data, not leaks; removed for the audit
done

leaks=()
for p in $(own_pids "."); do
    [ "$p" = $$ ] || [ "$p" = "$BASHPID" ] && continue
    leaks+=("process $p ($(cat /proc/$p/comm 2>/dev/null)): $(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | cut -c1-100)")
done
while read -r l; do leaks+=("link $l"); done < <(ip -o link show | awk -F': ' '{print $2}' | sort | comm -13 "$WORK/links.before" -)
diff -q <(nft list ruleset) "$WORK/nft.before" >/dev/null || leaks+=("nft ruleset differs: $(diff <(nft list ruleset) "$WORK/nft.before" | grep -c '^[<>]') lines")
# The manager's own SSH key pair and the database itself are not per-VM state.
# data/ssh (the client key) and data/bin (the embedded channel-owner binary, by digest) are caches, not per-VM files.
for f in $(find "$DATA" "$SOCK" \( -type f -o -type s -o -type p \) ! -name 'smolvm.db*' ! -path "$DATA/ssh/*" ! -path "$DATA/bin/*" 2>/dev/null); do
    leaks+=("file $f")
done
# Directories of VMs and snapshots (an interrupted capture is a directory) left without a row.
for d in $(find "$DATA/vms" "$DATA/snapshots" -mindepth 1 -maxdepth 1 2>/dev/null); do leaks+=("directory $d"); done
# No group of a VM that does not exist (none exists now). A sampled VMM outside its group is a leak of
# the host limits.
while read -r g; do [ -n "$g" ] && leaks+=("cgroup $g"); done < <(own_groups)
[ "$(count vmm_outside_cgroup)" = 0 ] || leaks+=("$(count vmm_outside_cgroup) VMMs sampled outside their cgroup")
if [ "$CGROUPS" = 1 ] && [ "$(count vmm_in_cgroup)" = 0 ] && [ "$(count created)" -gt 0 ]; then
    leaks+=("no VMM was ever seen in a cgroup (the cgroup audit saw nothing)")
fi
for table in vms leases port_forwards snapshots snapshot_users; do
    n=$(sqlite3 -readonly "$DATA/smolvm.db" "SELECT count(*) FROM $table" 2>/dev/null || echo "?")
    [ "$n" = 0 ] || leaks+=("state: $n rows in $table")
done

by_kind() { [ -f "$EV/$1" ] && sort "$EV/$1" | uniq -c | sort -rn | sed 's/^ */    /' || true; }
REPORT="${SOAK_REPORT:-$WORK/report.json}"
jq -n --argjson workers "$WORKERS" --argjson seconds $((t1 - t0)) \
    --argjson ok "$(count cycles_ok)" --argjson failed "$(count cycles_failed)" \
    --argjson created "$(count created)" --argjson cgroups "$CGROUPS" \
    --argjson vmm_in_cgroup "$(count vmm_in_cgroup)" \
    --argjson cgroups_seen "$(sort -u "$EV/vmm_in_cgroup" 2>/dev/null | wc -l)" \
    --argjson stopped_early "$([ -f "$WORK/stop" ] && echo true || echo false)" \
    --arg faults "$(by_kind faults)" --arg errors "$(by_kind errors)" \
    --arg violations "$(by_kind lease_violations)" \
    --arg examples "$(cat "$EV/error_examples" 2>/dev/null)" \
    --arg leaks "$(printf '%s\n' "${leaks[@]}")" --arg unusable "$(printf '%s\n' "${unusable[@]}")" \
    --slurpfile cleanup <(cat "$WORK/cleanup.json" 2>/dev/null || echo null) \
    '{workers: $workers, seconds: $seconds, cycles_ok: $ok, cycles_failed: $failed, vms_created: $created,
      stopped_early: $stopped_early, cgroups_mounted: ($cgroups == 1), vmm_samples_in_cgroup: $vmm_in_cgroup,
      vm_cgroups_seen: $cgroups_seen,
      faults: $faults, errors: $errors, error_examples: $examples, lease_violations: $violations, leaks: $leaks,
      unusable: $unusable, cleanup: $cleanup[0]}' >"$REPORT"

echo "soak: $(( $(count cycles_ok) + $(count cycles_failed) )) cycles in $((t1 - t0)) s ($(count cycles_ok) clean, $(count cycles_failed) hit a fault), $(count created) VMs created"
echo "faults injected: $(count faults)"; by_kind faults
echo "errors by kind: $(count errors)"; by_kind errors
if [ -s "$EV/error_examples" ]; then
    echo "first full error of each kind:"; sed 's/^/    /' "$EV/error_examples"
fi
echo "lease violations: $(count lease_violations)"; by_kind lease_violations
echo "cgroups: $([ "$CGROUPS" = 1 ] && echo mounted || echo "not available"); VMMs sampled in their group: $(count vmm_in_cgroup) ($(sort -u "$EV/vmm_in_cgroup" 2>/dev/null | wc -l) VMs), outside: $(count vmm_outside_cgroup)"
echo "unusable VMs after cleanup: ${#unusable[@]}"; printf '    %s\n' "${unusable[@]}" | grep -v '^    $'
echo "leaks: ${#leaks[@]}"; printf '    %s\n' "${leaks[@]}" | grep -v '^    $'
echo "report: $REPORT"
[ ${#leaks[@]} = 0 ] && [ ${#unusable[@]} = 0 ] && [ "$(count lease_violations)" = 0 ]
