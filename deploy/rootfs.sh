#!/bin/sh
# Assembles the service image's whole filesystem in OUT (the image is
# `FROM scratch` + this tree), from a built `mlops` binary and the quickstart
# example binary (which writes the seed model):
#
#   deploy/rootfs.sh MLOPS_BIN QUICKSTART_BIN OUT
#
# OUT gets:
#   /usr/local/bin/mlops                     the binary
#   the shared libraries `ldd` lists         (the loader and glibc: no distro base)
#   /etc/ssl/certs/ca-certificates.crt       CA roots for https object stores
#   /usr/share/mlops/seed/fraud.mlopstab     the quickstart's champion (flavor
#                                            burn-tabular), which the dev overlay's
#                                            init containers register into an empty
#                                            volume; SEED_MODEL=none leaves it out
#
# deploy/Dockerfile runs it in its build stage; .ci/deploy-smoke.py runs it on
# the binaries CI built, so the image CI runs holds exactly these files.
set -eu

if [ "$#" -ne 3 ]; then
    echo "usage: $0 MLOPS_BIN QUICKSTART_BIN OUT" >&2
    exit 2
fi
mlops=$1
quickstart=$2
out=$3
seed=${SEED_MODEL:-quickstart}

mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs"
cp "$mlops" "$out/usr/local/bin/mlops"

# Every shared library the binary loads, at the path the loader looks for it.
libs=$(ldd "$mlops" | sed -n 's#.*[[:space:]]\(/[^[:space:]]*\)[[:space:]](0x.*#\1#p')
if [ -z "$libs" ]; then
    echo "$0: ldd listed no libraries for $mlops (is it a dynamic Linux binary?)" >&2
    exit 1
fi
for lib in $libs; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
done

certs=/etc/ssl/certs/ca-certificates.crt
if [ -f "$certs" ]; then
    cp "$certs" "$out$certs"
else
    echo "$0: $certs is missing (install ca-certificates): https object stores would not verify" >&2
    exit 1
fi

case "$seed" in
none)
    ;;
quickstart)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # The quickstart trains, registers and promotes `fraud` models in a
    # registry of its own; its champion's artifact is the seed.
    if ! MLOPS_ROOT="$work/root" "$quickstart" >"$work/quickstart.log" 2>&1; then
        echo "$0: the quickstart failed; its log ends:" >&2
        tail -n 20 "$work/quickstart.log" >&2
        exit 1
    fi
    printf '[storage]\nroot = "file://%s/root"\n' "$work" >"$work/mlops.toml"
    # `verify` re-reads the champion and prints its digest; the registry keeps
    # each artifact's bytes under that digest.
    verified=$("$mlops" --json models --config "$work/mlops.toml" verify fraud @champion)
    digest=$(printf '%s\n' "$verified" | sed -n 's/.*"digest":"sha256:\([0-9a-f]\{64\}\)".*/\1/p')
    if [ -z "$digest" ]; then
        echo "$0: no digest in the champion's verification: $verified" >&2
        exit 1
    fi
    blob="$work/root/registry/blobs/sha256/$digest"
    if ! printf '%s  %s\n' "$digest" "$blob" | sha256sum -c --quiet - >/dev/null 2>&1; then
        echo "$0: $blob is missing or does not hash to sha256:$digest (has the registry layout changed?)" >&2
        exit 1
    fi
    mkdir -p "$out/usr/share/mlops/seed"
    cp "$blob" "$out/usr/share/mlops/seed/fraud.mlopstab"
    ;;
*)
    echo "$0: SEED_MODEL=$seed: expected quickstart or none" >&2
    exit 2
    ;;
esac
