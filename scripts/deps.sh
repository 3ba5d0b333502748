#!/usr/bin/env bash
# Installs the Debian packages lidb builds against, when any is missing.
set -euo pipefail
packages=(libopenblas-dev libpng-dev libjpeg62-turbo-dev libzstd-dev libdnnl-dev pkg-config time)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
if ! command -v swift >/dev/null; then
    echo "error: Swift 6.1 or later is needed on PATH (https://www.swift.org/install/)" >&2
    exit 1
fi
