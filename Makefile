# The two commands of the README's quick start:
#   make run    build the plugins and the host, serve on config.toml
#   make test   build everything and run every test
# Each installs what it needs (the wasm32-wasip2 target) so it works on a fresh machine.

CARGO ?= cargo
WASM_TARGET := wasm32-wasip2
WASM_OUT := target/$(WASM_TARGET)/release
# The workspace's crates that are not plugins: the host, and the support
# crate its tests share.
NOT_GUESTS := --exclude plugboard --exclude plugboard-test-support
# The plugins the default config serves (test plugins stay out of it).
SHIPPED_PLUGINS := onoff relay scene
PLUGIN_DIR := target/plugins
# Plugins in other languages are built into GUEST_OUT.
GUEST_OUT := target/guest
PYTHON ?= python3
COMPONENTIZE_PY_VERSION := 0.25.1
NPM ?= npm

.PHONY: run build plugins test lint wasm-target services install bench bench-load bench-call bench-reload bench-dev bench-kv aarch64 smoke-aarch64

run: build
	./target/release/plugboard serve --config config.toml

# --all-targets resolves dependency features as `cargo test` does (dev-dependencies
# included), so `make run` and `make test` share one build of wasmtime instead of two.
build: plugins
	$(CARGO) build --release --locked -p plugboard --all-targets

# Puts the plugboard binary on PATH: $(PREFIX)/bin (default ~/.local/bin).
# The plugin projects `plugboard new` makes call the binary that made them.
PREFIX ?= $(HOME)/.local
# With the manual pages (plugboard(1), plugboard-serve(1), ...) and the
# completions of bash, zsh and fish where those shells look under PREFIX.
SHARE = $(DESTDIR)$(PREFIX)/share
install:
	$(CARGO) build --release --locked -p plugboard
	install -D -m 755 target/release/plugboard $(DESTDIR)$(PREFIX)/bin/plugboard
	target/release/plugboard man --dir $(SHARE)/man/man1
	install -d $(SHARE)/bash-completion/completions $(SHARE)/zsh/site-functions $(SHARE)/fish/vendor_completions.d
	target/release/plugboard completions bash > $(SHARE)/bash-completion/completions/plugboard
	target/release/plugboard completions zsh > $(SHARE)/zsh/site-functions/_plugboard
	target/release/plugboard completions fish > $(SHARE)/fish/vendor_completions.d/plugboard.fish
	@echo "installed $(DESTDIR)$(PREFIX)/bin/plugboard, its manual pages and completions"

wasm-target:
	rustup target add $(WASM_TARGET)

# The scale-out tests and benchmarks run a real redis-server and HAProxy,
# the TLS tests openssl, the systemd unit's test systemd-analyze, the status
# page's test Chromium, from Debian's packages; installed once, if missing
# (as root, or with sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
services:
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null || \
		! command -v openssl >/dev/null || ! command -v systemd-analyze >/dev/null || \
		! { command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null; then \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends redis-server redis-tools haproxy openssl systemd; \
	fi
	@# The status page's test loads it in a headless browser; where Chromium
	@# cannot be installed, that test says it is skipped and the rest run.
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium; } || \
		echo "chromium could not be installed: the status page's browser test will be SKIPPED"

# Every guest, shipped and test-only alike: the workspace's Rust crates and
# the plugins in other languages.
plugins: wasm-target $(GUEST_OUT)/stats.wasm $(GUEST_OUT)/notify.wasm $(GUEST_OUT)/text.wasm
	$(CARGO) build --release --locked --target $(WASM_TARGET) --workspace $(NOT_GUESTS)
	mkdir -p $(PLUGIN_DIR)
	for p in $(SHIPPED_PLUGINS); do cp $(WASM_OUT)/$$p.wasm $(PLUGIN_DIR)/; done
	cp $(GUEST_OUT)/stats.wasm $(GUEST_OUT)/text.wasm $(PLUGIN_DIR)/

# Python: componentize-py (pinned) from PyPI; rebuilt when the source or the contract changes.
$(GUEST_OUT)/stats.wasm: plugins/python/stats/app.py plugins/python/sdk/plugboard.py wit/plugin.wit
	$(PYTHON) -m pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY_VERSION)
	mkdir -p $(GUEST_OUT)
	cd plugins/python/stats && "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/componentize-py" \
		-d ../../../wit -w batched-plugin componentize -p . -p ../sdk app -o ../../../$@

# Tests that need root (a network namespace, a tmpfs, a raised open-file
# limit) are marked #[ignore]; run as root (as CI does), `make test` runs
# them too, and otherwise cargo lists them as ignored.
AS_ROOT_TESTS := $(shell [ "$$(id -u)" = 0 ] && echo --include-ignored)

test: plugins services
	$(CARGO) test --release --locked -p plugboard -- $(AS_ROOT_TESTS)

lint: wasm-target
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked -p plugboard --all-targets -- -D warnings
	$(CARGO) clippy --locked -p plugboard --all-targets --features native-baseline,instruction-count -- -D warnings
	$(CARGO) clippy --locked --target $(WASM_TARGET) --workspace $(NOT_GUESTS) -- -D warnings

# Every benchmark, one after another (~5 min): prints figures, asserts nothing.
# The native-baseline feature builds the `serve --native-baseline` the load
# benchmark compares against; it rebuilds only the host crate.
bench: plugins services
	$(CARGO) bench --locked -p plugboard --features native-baseline

# Throughput and latency over TCP against the native baseline; resident memory.
bench-load: plugins services
	$(CARGO) bench --locked -p plugboard --features native-baseline --bench load

# Cost of one plugin call (fresh instance + handle) against a native baseline.
bench-call: plugins
	$(CARGO) bench --locked -p plugboard --bench plugin_call

# Hot-reload latency and restart time with a cold and a warm compile cache.
bench-reload: plugins
	$(CARGO) bench --locked -p plugboard --bench reload

# The author's loop: saved edit -> first new reply, Rust, Python, JavaScript.
bench-dev: plugins
	$(CARGO) bench --locked -p plugboard --bench dev

# Cost of each key-value store operation, in memory and on disk.
bench-kv: services
	$(CARGO) bench --locked -p plugboard --bench kv

# The notify example (outbound HTTP, so not served without a grant): the
# http-plugin world adds wasi:http's outgoing handler to the plugin world.
$(GUEST_OUT)/notify.wasm: plugins/python/notify/app.py wit/plugin.wit wit/http.wit
	$(PYTHON) -m pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY_VERSION)
	mkdir -p $(GUEST_OUT)
	cd plugins/python/notify && "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/componentize-py" \
		-d ../../../wit -w http-plugin componentize app -o ../../../$@

# JavaScript: componentize-js, pinned by package-lock.json, through its API
# (build.mjs); rebuilt when the source, the lock or the contract changes.
# The build script is the one `plugboard new --lang js` writes into a project
# (thrown Errors become error replies), filled in for this directory, and the
# SDK is copied beside plugin.js (componentize-js reads only files under it).
JS_BUILD := host/src/cli/templates/js/build.mjs
$(GUEST_OUT)/text.wasm: plugins/js/text/plugin.js $(JS_BUILD) plugins/js/sdk/plugboard.js plugins/js/text/package-lock.json wit/plugin.wit
	mkdir -p $(GUEST_OUT)
	sed -e 's|{{file}}|text|' -e 's|{{wit}}|../../../wit|' -e 's|{{sdk}}|./.plugboard.js|' $(JS_BUILD) > plugins/js/text/.build.mjs
	cp plugins/js/sdk/plugboard.js plugins/js/text/.plugboard.js
	cd plugins/js/text && $(NPM) ci --silent --no-audit --no-fund && node .build.mjs ../../../$@

# A server for a 64-bit ARM board (a Raspberry Pi 3, 4 or 5 on a 64-bit OS):
# the Rust target, and Debian's cross C compiler (ring and mimalloc build C),
# installed if missing. The binary: target/aarch64-unknown-linux-gnu/release/plugboard.
AARCH64 := aarch64-unknown-linux-gnu
aarch64:
	rustup target add $(AARCH64)
	@command -v aarch64-linux-gnu-gcc >/dev/null || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross; }
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
		$(CARGO) build --release --locked -p plugboard --target $(AARCH64)

# Runs that binary under qemu-user (Debian's qemu-user-static 8 or later,
# installed by the script if missing): it serves onoff on the shipped
# config's settings and hot-reloads it. Not part of `make test`, whose
# runs it would slow by a cross build of every dependency; CI runs it after
# the suite (see docs/deployment.md, "Small machines").
smoke-aarch64: aarch64 build
	tests/aarch64-smoke.sh
