#!/usr/bin/env bash
# Installs ferry's build and test dependencies from Debian bookworm's apt (run as root).
# Skips apt entirely when everything is already installed.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config clang-format
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev libcpp-httplib-dev
  libssl-dev openssl libicu-dev libhiredis-dev redis-server
  libucx-dev ucx-utils libxxhash-dev iproute2 curl ca-certificates
  libgtest-dev libgmock-dev libbenchmark-dev clang-14 libfuzzer-14-dev
  python3 python3-dev python3-grpcio python3-protobuf python3-pytest
  pybind11-dev python3-torch python3-numpy
  python3-venv python3-pip
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root or install them with apt-get" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
