#!/usr/bin/env bash
# Runs the Jepsen-style test (tests/tests/jepsen.rs) for longer than CI's
# 60-second pass: three real nodes in network namespaces, a nemesis that
# partitions, kills and pauses them, and a checker that every acknowledged
# add survives. Needs root.
#
#   bench/jepsen.sh [seconds-of-faults] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-1800}
export CONCORD_JEPSEN_SECS=$SECS
[ -n "${2:-}" ] && export CONCORD_JEPSEN_SEED=$2
cargo build --release -p concord
CONCORD_BIN=$PWD/target/release/concord cargo test --release -p concord-tests --test jepsen -- --nocapture
