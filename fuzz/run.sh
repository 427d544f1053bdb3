#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 60) with cargo-fuzz (libFuzzer,
# AddressSanitizer) and prints a table: executions, and findings (crashes,
# over-allocations, timeouts), each saved under fuzz/artifacts/<target>/.
#
#   cargo install cargo-fuzz && rustup toolchain install nightly
#   bash fuzz/run.sh 300
#
# Built with debug assertions and overflow checks, so arithmetic that would
# wrap in a release build is a finding too.
# Limits: 5 s per input (a slower one is a finding), 1 GiB per allocation
# and 2 GiB resident.
set -uo pipefail
secs=${1:-60}
cd "$(dirname "$0")"
tools=${WALHOUSE_TOOLS_DIR:-/var/tmp/walhouse-tools}
# cargo-fuzz sets RUSTFLAGS, which hides the rpath of .cargo/config.toml.
export LD_LIBRARY_PATH="$tools/duckdb/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Seeds: one valid input per target, so the fuzzer starts from real shapes.
seed() { mkdir -p "corpus/$1"; [ -e "corpus/$1/seed" ] || printf '%b' "$2" > "corpus/$1/seed"; }
seed company_events '{"idempotency_key":"k","event":"created","id":"3b0c7f52-9d7e-4a51-8f0e-2c1d6a4b9e01","created_at":1700000000,"updated_at":1700000000,"organization_id":"a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a","name":"Acme","changes":"{}"}'
seed insolvency_csv 'organization_id,insolvency_date,court\na7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a,2024-05-01,"Paris, 1st"\n'
seed avro_schema '{"type":"record","name":"Envelope","fields":[{"name":"before","type":["null",{"type":"record","name":"V","fields":[{"name":"id","type":"long"}]}]},{"name":"after","type":["null","V"]},{"name":"source","type":{"type":"record","name":"S","fields":[{"name":"schema","type":"string"},{"name":"table","type":"string"}]}},{"name":"op","type":"string"}]}\0\x00\x02\x02\x02p\x02t\x02c'
seed pgoutput '\x15B\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07'
seed copy_text '\x03 1\tabc\\tdef\t\\N'
seed avro_body '\x00\x02\x02\x02'
seed value_text '\x21\xff\xff2024-05-01 10:00:00.5+05:30'

printf '| target | seconds | executions | findings |\n|---|---|---|---|\n'
status=0
for t in avro_body avro_schema company_events insolvency_csv pgoutput copy_text value_text; do
  log="logs/$t.log"
  mkdir -p logs "artifacts/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  cargo +nightly fuzz run --debug-assertions "$t" -- -max_total_time="$secs" -timeout=5 \
    -malloc_limit_mb=1024 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=1
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  found=$(( $(find "artifacts/$t" -type f | wc -l) - before ))
  printf '| %s | %s | %s | %s |\n' "$t" "$secs" "${runs:-build failed, see fuzz/$log}" "$found"
done
exit $status
