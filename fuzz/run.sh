#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named) one after another for SECONDS each (default
# 3600), with its dictionary and seeds, and prints libFuzzer's coverage and execution counts.
# Needs a nightly toolchain and `cargo install cargo-fuzz`; see README, "Fuzzing".
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-3600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
    case $t in
        classify) dict=sql ;;
        scram_client | scram_server) dict=scram ;;
        client_framing | server_framing) dict= ;;
        *) dict=$t ;;
    esac
    args=(-max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1)
    [ -n "$dict" ] && args+=(-dict="fuzz/dict/$dict.dict")
    corpus=(fuzz/corpus/"$t")
    mkdir -p "${corpus[0]}"
    [ "$t" = config ] && corpus+=(config)
    log=fuzz/artifacts/"$t".log
    mkdir -p fuzz/artifacts
    echo "== $t ($seconds s)"
    status=0
    cargo +nightly fuzz run "$t" "${corpus[@]}" -- "${args[@]}" >"$log" 2>&1 || status=$?
    grep -E '^#[0-9]+[[:space:]].*cov: ' "$log" | tail -1 || true
    grep -E 'stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    if [ "$status" -ne 0 ]; then
        echo "   $t failed ($status): see $log and fuzz/artifacts/$t/"
        exit "$status"
    fi
done
