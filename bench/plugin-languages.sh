#!/usr/bin/env bash
# Times last-writer-wins resolvers written in Rust, Python and JavaScript on
# the same sibling sets (2 x 1 KiB and 10 x 10 KiB): compile time, instantiate
# time, instantiate + resolve time, and linear memory per instance.
#
#   bash bench/plugin-languages.sh            # prints one line per run
#
# Uses the toolchains the example tests install under target/ (a
# componentize-py virtualenv and componentize-js from the JS example's
# package-lock.json), installing them first when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/target/bench-lww
mkdir -p "$out"

cargo build --release -p concord
concord=$root/target/release/concord

# Rust: the plugins/lww crate.
cargo build --release --target wasm32-unknown-unknown --manifest-path plugins/Cargo.toml -p lww
cp plugins/target/wasm32-unknown-unknown/release/lww.wasm "$out/lww-rust.wasm"

# Python.
venv=$root/target/componentize-py-venv
if [ ! -x "$venv/bin/componentize-py" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r examples/python-resolver/requirements.txt
fi
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/componentize-py" -d guest-sdk/wit/since_v0.1.0 -w resolver \
    componentize -p bench/lww lww_py -o "$out/lww-python.wasm"

# JavaScript.
tools=$root/target/js-resolver-tools
if [ ! -x "$tools/node_modules/.bin/componentize-js" ]; then
    mkdir -p "$tools"
    cp examples/js-resolver/package.json examples/js-resolver/package-lock.json "$tools/"
    (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error)
fi
(cd bench/lww && "$tools/node_modules/.bin/componentize-js" lww.js --wit ../../guest-sdk/wit/since_v0.1.0 \
    --world-name resolver --disable stdio random clocks http fetch-event --out "$out/lww-js.wasm")

for lang in rust python js; do
    for shape in "2 1024" "10 10240"; do
        set -- $shape
        "$concord" plugin bench "$out/lww-$lang.wasm" --siblings "$1" --value-bytes "$2" --calls 300
    done
done
