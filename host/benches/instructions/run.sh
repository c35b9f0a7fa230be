#!/usr/bin/env bash
# Counts the server's user-space instructions per command under callgrind:
# docs/performance.md's "The host's own work, counted". Timings on a shared 2-core
# machine move by 20-30% between runs; these counts agree to 0.02%, so they
# show what a change to the host path is worth. Run it on a quiet machine:
# under CPU contention a wasm call takes longer, epoch interruption yields
# more often, and the wasm path counts 2% more.
#
#   host/benches/instructions/run.sh [REV...]     (default: HEAD)
#
# For each revision: builds it (committed code only, in a scratch worktree,
# with the `instruction-count` feature) into target/instructions, then runs it twice
# per path, 32 000 and 128 000 commands of `on` at 64 x 16 in lockstep
# (lockstep.py), and prints the difference over 96 000: startup cancels out.
# Paths: `native` (serve --native-baseline) and `wasm` (onoff, batched, in a
# warm instance; plugin state in memory). Needs valgrind and python3, and
# onoff built (`make plugins`); the same onoff.wasm serves every revision.
# The first build of a tree takes minutes (its own target directory: the
# measuring binary must not replace target/release/plugboard). Revisions
# from before the feature existed (2026-12-04) need the old measure.patch
# from git history.
#
# ONOFF=file serves another build of onoff (one built against an older WIT
# loads on older revisions too). SHAPE="CONNECTIONS DEPTH SMALL LARGE"
# measures another load: SHAPE="8 0 2000
# 8000" is a connection per command (8 clients; 2 000 and 8 000 commands).
set -euo pipefail
read -r connections depth small large <<<"${SHAPE:-64 16 32000 128000}"

here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
onoff=${ONOFF:-$repo/target/wasm32-wasip2/release/onoff.wasm}
[ -f "$onoff" ] || { echo "error: $onoff missing: run 'make plugins' first" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 1; }

work=$(mktemp -d)
cleanup() {
    git -C "$repo" worktree remove --force "$work/tree" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/plugins"
cp "$onoff" "$work/plugins/"
cat >"$work/config.toml" <<EOF
listen = "127.0.0.61:1190"
plugin_dir = "$work/plugins"
hot_reload = false
compile_cache = true
cache_dir = "$work/cache"
state_store = "memory"
max_connections = 80
max_connections_per_ip = 80
EOF

# Runs the server under callgrind for $3 commands on path $2; prints its total.
count() {
    local bin=$1 path=$2 commands=$3 extra=()
    [ "$path" = native ] && extra=(--native-baseline)
    rm -f "$work"/cg.out.*
    TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.out.%p" \
        "$bin" serve --config "$work/config.toml" "${extra[@]}" >"$work/server.log" 2>&1 &
    local server=$!
    # Valgrind starts the server 50 times slower: up to two minutes.
    for _ in $(seq 1 1200); do
        grep -q "listening on" "$work/server.log" && break
        kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
        sleep 0.1
    done
    python3 "$here/lockstep.py" 127.0.0.61 1190 "$connections" "$depth" "$commands" on >/dev/null
    kill -INT "$server"
    wait "$server"
    grep -h "^summary" "$work"/cg.out.* | awk '{ total += $2 } END { print total }'
}

for rev in "${@:-HEAD}"; do
    git -C "$repo" worktree remove --force "$work/tree" >/dev/null 2>&1 || true
    git -C "$repo" worktree add --quiet --detach "$work/tree" "$rev"
    cargo build --quiet --release --locked -p plugboard --features native-baseline,instruction-count \
        --manifest-path "$work/tree/Cargo.toml" --target-dir "$repo/target/instructions"
    bin=$repo/target/instructions/release/plugboard
    rm -rf "$work/cache"
    count "$bin" wasm 1000 >/dev/null # fills the compile cache
    for path in native wasm; do
        small_total=$(count "$bin" "$path" "$small")
        large_total=$(count "$bin" "$path" "$large")
        echo "$(git -C "$repo" rev-parse --short "$rev") $path ($connections x $depth): $(((large_total - small_total) / (large - small))) instructions a command"
    done
done
