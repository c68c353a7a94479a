#!/usr/bin/env bash
# After `make test`: one closing line saying what skipped and why, from the lines that
# picie_testkit::skip / skip_setup appended to the log (kind, test, reason, tab-separated).
# `skipped: 0` when nothing did. The reasons are grouped by their first word ("s3:",
# "chromium:", ...) with the count of tests each.
set -euo pipefail
log=${1:?usage: skips.sh LOG}
if [ ! -s "$log" ]; then
    echo "skipped: 0"
    exit 0
fi
n=$(wc -l < "$log")
reasons=$(cut -f3 "$log" | sort | uniq -c | sort -rn |
    awk '{c=$1; $1=""; sub(/^ /, ""); printf "%s%s%s", (NR>1 ? "; " : ""), $0, (c>1 ? " (x" c ")" : "")}')
echo "skipped tests:"
awk -F'\t' '{printf "  %-8s %s: %s\n", $1, $2, $3}' "$log"
echo "skipped: $n ($reasons)"
