#!/usr/bin/env bash
# One-time setup on a fresh Debian machine with only Rust installed: everything the main job and
# the tests need beyond the toolchain. Safe to run again; it installs only what is missing.
#   - dig (bind9-dnsutils): the DNS tests and drills query the fabric's DNS servers with real dig
#   - curl: the e2e tests read an agent's /metrics with the operator certificate
#   - qemu-io, qemu-img, qemu-nbd (qemu-utils) and nbdinfo, nbdcopy (libnbd-bin): real NBD clients
#     and a reference server for the storage and demo tests
#   - cargo-nextest: the test runner (README "Run the tests")
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi

need=()
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v curl >/dev/null || need+=(curl ca-certificates)
command -v qemu-io >/dev/null || need+=(qemu-utils)
command -v nbdinfo >/dev/null || need+=(libnbd-bin)
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest (cargo install, a few minutes)"
  cargo install cargo-nextest --locked
fi

echo "setup: dig $(dig -v 2>&1 | head -1 | sed 's/^DiG //'), $(qemu-io --version | head -1)," \
  "$(nbdinfo --version | head -1), $(cargo nextest --version | head -1)"
