# Two entry points: `make run` (the default pipeline) and `make test` (the whole suite).
# Both set up the venv with PyTorch's libtorch first (scripts/setup.sh, idempotent).

VENV ?= .venv
export PICIE_VENV := $(VENV)
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
# torch-sys finds libtorch inside the venv's PyTorch. It only checks that this variable is
# set, but rebuilds when its value changes: the venv's path as the value makes a build cache
# shared between clones (CARGO_TARGET_DIR) relink against the right venv.
export LIBTORCH_USE_PYTORCH := $(VIRTUAL_ENV)

.PHONY: setup build run test bench lint chromium
setup:
	@bash scripts/setup.sh

build: setup
	cargo build --release --bin picie

run: build
	cargo run --release --quiet --bin picie -- run pipeline.yaml

# Every crate of the workspace: the engine (engine/), and picie with its stages.
test: setup
	cargo test --workspace --all-targets

# `make bench` runs plan, augment and rerun; `make bench B=kmeans` (or extract, train, vit, kmeans-camvid,
# kmeans-stream, evaluate) runs one of the others (BENCHMARKS.md).
B ?= all
bench:
	@bash scripts/setup.sh --bench
	cargo run --release --bin picie-bench -- $(B)

# Headless Chromium (apt-get) for the report's browser test, which skips without it.
chromium:
	@bash scripts/setup.sh --chromium

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
