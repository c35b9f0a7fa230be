#!/usr/bin/env bash
# The server built for 64-bit ARM (`make aarch64`), run under qemu-user:
# it starts on the shipped config's settings with onoff, answers `on` with
# `success`, and hot-reloads a plugin copied over it. `make smoke-aarch64`
# builds what it needs and runs it; the client is this machine's own build.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
arm=$repo/target/aarch64-unknown-linux-gnu/release/plugboard
client=$repo/target/release/plugboard
wasm=$repo/target/wasm32-wasip2/release

# qemu-user 8 or later: 7.2 (Debian 12's own) keeps a descriptor for every
# page of address space a program reserves, and the instance pool reserves
# tens of TiB, so it runs out of memory. Debian 12 has qemu 10 in its
# backports, which this adds to apt's sources.
find_qemu() { command -v qemu-aarch64-static || command -v qemu-aarch64 || true; }
qemu_major() { "$1" --version | awk '/version/ {split($3, v, "."); print v[1] + 0; exit}'; }
recent_qemu() { [ -n "$qemu" ] && [ "$(qemu_major "$qemu")" -ge 8 ]; }
qemu=$(find_qemu)
if ! recent_qemu; then
    sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    from=
    if grep -q '^12' /etc/debian_version 2>/dev/null; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' |
            $sudo tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
        from="-t bookworm-backports"
    fi
    $sudo apt-get update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends $from qemu-user-static
    qemu=$(find_qemu)
    recent_qemu || { echo "error: this smoke needs qemu-user 8 or later (found: ${qemu:-none})" >&2; exit 1; }
fi
for file in "$arm" "$client" "$wasm/onoff.wasm" "$wasm/testing_rival.wasm"; do
    [ -f "$file" ] || { echo "error: $file missing: run 'make smoke-aarch64'" >&2; exit 1; }
done
work=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/plugins"
cp "$wasm/onoff.wasm" "$work/plugins/"
# The shipped config, with its paths and port made the test's own.
sed -e 's|^listen = .*|listen = "127.0.0.1:0"|' \
    -e 's|^plugin_dir = .*|plugin_dir = "plugins"|' \
    -e 's|^cache_dir = .*|cache_dir = "cache"|' \
    -e 's|^state_dir = .*|state_dir = "state"|' \
    "$repo/config.toml" > "$work/config.toml"
started=$(date +%s.%N)
# The compile child is the same ARM binary: with binfmt_misc registered for
# ARM, qemu-user runs it too; without, the server cannot start it and
# compiles in its own process, saying so.
QEMU_LD_PREFIX=/usr/aarch64-linux-gnu "$qemu" -L /usr/aarch64-linux-gnu "$arm" \
    serve --config "$work/config.toml" 2>"$work/log" &
server=$!
addr=
for _ in $(seq 1 1200); do
    addr=$(grep -o 'listening on [0-9.:]*' "$work/log" | awk '{print $3}' || true)
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$work/log" >&2; exit 1; }
    sleep 0.5
done
[ -n "$addr" ] || { echo "error: the ARM server did not start" >&2; cat "$work/log" >&2; exit 1; }
echo "ARM server listening on $addr after $(echo "$(date +%s.%N) - $started" | bc) s"
grep -q "$(uname -m)" <(file "$arm") && { echo "error: $arm is not an ARM binary" >&2; exit 1; }
reply=$("$client" send --addr "$addr" on)
[ "$reply" = success ] || { echo "error: on -> $reply" >&2; exit 1; }
echo "on -> $reply"
cp "$wasm/testing_rival.wasm" "$work/plugins/.onoff.partial"
mv "$work/plugins/.onoff.partial" "$work/plugins/onoff.wasm"
for _ in $(seq 1 1200); do
    grep -q "plugin set updated" "$work/log" && break
    sleep 0.5
done
reply=$("$client" send --addr "$addr" on)
[ "$reply" = "rival on" ] || { echo "error: after the reload, on -> $reply" >&2; cat "$work/log" >&2; exit 1; }
echo "after a hot reload, on -> $reply"
rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$server/status")
echo "resident (qemu and the ARM server): ${rss} MiB"
echo "ok: the aarch64 build serves and hot-reloads under qemu"
