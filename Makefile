# lidb — common tasks. `make demo` and `make test` work on a fresh Debian machine with Swift.
.PHONY: deps demo test test-release bench fuzz fixtures samples clean

deps:
	bash scripts/deps.sh

demo: deps
	bash scripts/demo.sh

test: deps
	swift build --build-tests
	swift test --skip-build

bench: deps
	bash Benchmarks/format/run.sh

fuzz: deps
	bash Fuzz/run.sh

# Reference fixtures and samples (need the pinned Python venv: converters/setup_venv.sh).
fixtures:
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_format_fixtures.py
samples:
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/samples/make_samples.py

clean:
	rm -rf .build demo-output
