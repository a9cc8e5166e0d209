#!/usr/bin/env bash
# Runs every benchmark in the project and prints ONE Markdown table: each
# benchmark's ns/op, B/op, allocs/op and every custom metric it reports
# (b.ReportMetric: the reference figure measured in the same run, such as a
# direct libvips call, a serial commit or the bare Redis script, sits beside
# the figure it is compared with). `make bench` runs it.
#
# Environment:
#   BENCH=regexp      which benchmarks (default .)
#   BENCHTIME=1s      go test -benchtime (default Go's 1s)
#   COUNT=1           go test -count
#   PKGS="./a ./b"    packages (default: every package with a Benchmark func)
#   OUT=path          also keep the raw `go test` output (default artifacts/bench.txt)
#   SSE_BENCH_SECONDS=60  how long the relay benchmark records 300 photos/s
#
# Exits non-zero if any benchmark fails; the table still shows the others.
set -uo pipefail
cd "$(dirname "$0")/.."

bench=${BENCH:-.}
count=${COUNT:-1}
out=${OUT:-${CLINIMG_ARTIFACTS:-artifacts}/bench.txt}
mkdir -p "$(dirname "$out")"

if [ -z "${PKGS:-}" ]; then
  PKGS=$(grep -rl --include='*_test.go' -E '^func Benchmark[A-Z_]' pkg dev services deploy 2>/dev/null |
    xargs -r -n1 dirname | sort -u | sed 's|^|./|' | tr '\n' ' ')
fi
if [ -z "$PKGS" ]; then
  echo "bench: no benchmarks found" >&2
  exit 1
fi

export SSE_BENCH_SECONDS=${SSE_BENCH_SECONDS:-60}
args=(-run '^$' -bench "$bench" -benchmem -count "$count" -timeout 30m)
[ -n "${BENCHTIME:-}" ] && args+=(-benchtime "$BENCHTIME")

echo "bench: go test ${args[*]} $PKGS" >&2
# shellcheck disable=SC2086
go test "${args[@]}" $PKGS 2>&1 | tee "$out" >&2
status=${PIPESTATUS[0]}

cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')
[ -z "$cpu" ] && cpu=$(grep -m1 '^cpu:' "$out" | cut -d: -f2- | sed 's/^ *//')
disk=$(df -h --output=source . 2>/dev/null | tail -1)

echo
echo "Benchmarks, $(date -u +%Y-%m-%dT%H:%MZ) on ${cpu:-unknown CPU}, $(nproc 2>/dev/null || echo ?) CPUs," \
  "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo 2>/dev/null)," \
  "$(uname -sr), $(go env GOVERSION), disk ${disk:-?}:"
echo
awk '
  # go test -bench prints "pkg: <import path>" before each package'"'"'s lines
  # and one line per benchmark: name, iterations, then value/unit pairs.
  /^pkg: / { pkg = $2; sub(/^github.com\/clinicalimages\/clinimg\//, "", pkg); next }
  /^Benchmark/ && NF >= 4 && $2 ~ /^[0-9]+$/ {
    name = $1; sub(/^Benchmark/, "", name); sub(/-[0-9]+$/, "", name)
    ns = ""; b = ""; allocs = ""; other = ""
    for (i = 3; i + 1 <= NF; i += 2) {
      v = $i; u = $(i + 1)
      if (u == "ns/op") ns = v
      else if (u == "B/op") b = v
      else if (u == "allocs/op") allocs = v
      else other = other (other == "" ? "" : ", ") v " " u
    }
    rows[++n] = sprintf("| %s | %s | %s | %s | %s | %s | %s |", pkg, name, $2, ns, b, allocs, other)
    next
  }
  /^--- FAIL: Benchmark/ || /^FAIL/ { failed[++nf] = $0 }
  END {
    print "| Package | Benchmark | Runs | ns/op | B/op | allocs/op | Measured beside it (custom metrics, references) |"
    print "|---|---|---:|---:|---:|---:|---|"
    for (i = 1; i <= n; i++) print rows[i]
    if (n == 0) print "| (none) | | | | | | |"
    for (i = 1; i <= nf; i++) print "\n" failed[i]
  }
' "$out"
echo
echo "Raw output: $out" >&2
exit "$status"
