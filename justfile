# Recipes for those who have `just`; each is a plain cargo command you can run without it.

# Run the whole federation on this machine (README command 1)
up:
    cargo run --release -- up

# Run the whole test suite against a real nats-server (README command 2)
test:
    cargo test

# What CI runs
ci:
    .ci/run

# Lints as CI runs them
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# Check the three platform configs
check-configs:
    cargo run -q -- config check configs/legion.toml
    cargo run -q -- config check configs/thor.toml
    cargo run -q -- config check configs/sprout.toml

# The Python client's tests in a fresh venv, against a federation they start (part of `ci`)
python-test:
    cargo build --bin sagefed
    python3 -m venv .sagefed/venv
    .sagefed/venv/bin/python -m pip install --quiet ./python pytest
    SAGEFED_BIN=target/debug/sagefed .sagefed/venv/bin/python -m pytest python/tests -q
