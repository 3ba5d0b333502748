# Shared by the benchmark scripts: the pinned Python venv and a release build of lidb.
# Sets $venv and $lidb. Source it from the repository root.
venv="${LIDB_VENV:-$HOME/.cache/lidb-venv}"
[[ -x "$venv/bin/python" ]] || bash converters/setup_venv.sh
swift build -c release --product lidb
lidb="$(swift build -c release --show-bin-path)/lidb"
