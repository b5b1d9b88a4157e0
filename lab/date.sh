#!/bin/bash
# /bin/date in the lab: busybox date, plus %N (nanoseconds, at microsecond resolution), which
# busybox's date lacks, so that `date +%s.%N` works. The time comes from bash's $EPOCHREALTIME.
case "$*" in
*%N*) ;;
*) exec busybox date "$@" ;;
esac
t=$EPOCHREALTIME
ns=${t#*.}000
# Fast path (no second exec) for formats made of %s, %N and plain text, like +%s.%N.
if [ $# -eq 1 ] && [[ $1 == +* ]]; then
    f=${1#+}
    f=${f//\%s/${t%.*}}
    f=${f//\%N/$ns}
    if [[ $f != *%* ]]; then
        printf '%s\n' "$f"
        exit 0
    fi
fi
when=(-d "@${t%.*}")
for a in "$@"; do
    case $a in -d* | -r* | -s* | --date* | --reference* | --set*) when=() ns=000000000 ;; esac
done
args=()
for a in "$@"; do
    case $a in +*) a=${a//\%N/$ns} ;; esac
    args+=("$a")
done
exec busybox date "${when[@]}" "${args[@]}"
