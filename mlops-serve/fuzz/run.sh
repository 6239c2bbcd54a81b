#!/usr/bin/env bash
# Fuzzes request decoding for a bounded time (default 60 s):
#     mlops-serve/fuzz/run.sh [SECONDS]
# Installs a nightly toolchain and cargo-fuzz when missing. Crashes are written to
# mlops-serve/fuzz/artifacts/decode_request/. CI runs the stable property test
# (mlops-serve/tests/serve/codec.rs, `decoding_never_panics`) instead.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz
mkdir -p corpus/decode_request
printf '%s' '{"id":"1","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}' \
    > corpus/decode_request/json
cargo +nightly fuzz run decode_request corpus/decode_request -- -max_total_time="$seconds"
