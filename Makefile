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

.PHONY: setup build run test bench lint msrv chromium
setup:
	@bash scripts/setup.sh

build: setup
	cargo build --release --bin picie

run: build
	cargo run --release --quiet --bin picie -- run pipeline.yaml

# Every crate of the workspace: the engine (engine/), and picie with its stages. Every
# suite runs (--no-fail-fast); the last line says what skipped and why (picie_testkit).
SKIP_LOG := $(CURDIR)/target/test-skips.log
test: setup
	@mkdir -p $(dir $(SKIP_LOG)) && rm -f $(SKIP_LOG)
	@PICIE_SKIP_LOG=$(SKIP_LOG) cargo test --workspace --all-targets --no-fail-fast; \
	rc=$$?; bash scripts/skips.sh $(SKIP_LOG); exit $$rc

# `make bench` runs plan, augment and rerun; `make bench B=kmeans` (or extract, train, vit, kmeans-camvid,
# kmeans-stream, evaluate, crf, knn) runs one of the others (BENCHMARKS.md).
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

# The declared rust-version (Cargo.toml), checked with that toolchain (rustup installs it).
# Where the default toolchain already is that version, `make lint`'s clippy checked it.
MSRV := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
msrv: setup
	@if rustc --version | grep -q "^rustc $(MSRV)[. ]"; then \
	    echo "msrv: the default toolchain is rust-version $(MSRV): checked by make lint"; \
	else \
	    rustup toolchain install $(MSRV) --profile minimal --no-self-update && \
	    cargo +$(MSRV) check --workspace --all-targets; \
	fi
