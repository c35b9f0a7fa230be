# The two commands of the README's quick start:
#   make run    build the plugins and the host, serve on config.toml
#   make test   build everything and run every test
# Each installs what it needs (the wasm32-wasip2 target) so it works on a fresh machine.

CARGO ?= cargo
WASM_TARGET := wasm32-wasip2
WASM_OUT := target/$(WASM_TARGET)/release
# The plugins the default config serves (test plugins stay out of it).
SHIPPED_PLUGINS := onoff
PLUGIN_DIR := target/plugins

.PHONY: run build plugins test lint wasm-target bench-call bench-reload bench-kv

run: build
	./target/release/plugboard serve --config config.toml

# --all-targets resolves dependency features as `cargo test` does (dev-dependencies
# included), so `make run` and `make test` share one build of wasmtime instead of two.
build: plugins
	$(CARGO) build --release --locked -p plugboard --all-targets

wasm-target:
	rustup target add $(WASM_TARGET)

# Every guest crate in the workspace, shipped and test-only alike.
plugins: wasm-target
	$(CARGO) build --release --locked --target $(WASM_TARGET) --workspace --exclude plugboard
	mkdir -p $(PLUGIN_DIR)
	for p in $(SHIPPED_PLUGINS); do cp $(WASM_OUT)/$$p.wasm $(PLUGIN_DIR)/; done

test: plugins
	$(CARGO) test --release --locked -p plugboard

lint: wasm-target
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked -p plugboard --all-targets -- -D warnings
	$(CARGO) clippy --locked --target $(WASM_TARGET) --workspace --exclude plugboard -- -D warnings

# Cost of one plugin call (fresh instance + handle) against a native baseline.
bench-call: plugins
	$(CARGO) bench --locked -p plugboard --bench plugin_call

# Hot-reload latency and restart time with a cold and a warm compile cache.
bench-reload: plugins
	$(CARGO) bench --locked -p plugboard --bench reload

# Cost of each key-value store operation, in memory and on disk.
bench-kv:
	$(CARGO) bench --locked -p plugboard --bench kv
