#!/usr/bin/env bash
# Create (if missing) the Python venv used by the converters and fixture
# generators, and install the pinned requirements into it.
#
#   LIDB_VENV  venv location (default: $HOME/.cache/lidb-venv)
#   PYTHON     interpreter used to create the venv (default: python3)
#
# Usage: bash converters/setup_venv.sh
#        "${LIDB_VENV:-$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_format_fixtures.py
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${LIDB_VENV:-$HOME/.cache/lidb-venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating venv at $venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi

"$venv/bin/python" -m pip install --upgrade pip
"$venv/bin/python" -m pip install -r "$here/requirements.txt"
# transformers' default image processors need torchvision built for the pinned torch.
"$venv/bin/python" -c "import torch, torchvision; torchvision.ops.nms  # noqa" >/dev/null
echo "venv ready: $venv"
