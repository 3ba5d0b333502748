# lidb — common tasks. `make demo` and `make test` work on a fresh Debian machine with Swift.
.PHONY: deps demo test test-python bench check-exports fuzz fuzz-semantic fixtures samples world check-world eval-world clean

deps:
	bash scripts/deps.sh

demo: deps
	bash scripts/demo.sh

test: deps test-python
	swift build --build-tests
	swift test --skip-build
	LIDB_BIN="$$(swift build --show-bin-path)/lidb" $(PYVENV)/bin/python -m unittest discover -s converters/python/cross

# The independent Python reader/writer of the format (numpy + zstandard only), in its own venv.
PYVENV ?= .build/pyvenv
test-python:
	@test -x $(PYVENV)/bin/python || python3 -m venv $(PYVENV)
	@$(PYVENV)/bin/python -c "import numpy, zstandard" 2>/dev/null || $(PYVENV)/bin/pip install -q "numpy==2.4.6" "zstandard==0.25.0"
	@$(PYVENV)/bin/pip install -q ./converters/python
	cd /tmp && $(CURDIR)/$(PYVENV)/bin/python -c "import lidb, lidb.base, lidb.subject; print('lidb (Python)', lidb.__version__, 'installed')"
	$(PYVENV)/bin/python -m unittest discover -s converters/python/tests
	$(PYVENV)/bin/python converters/python/make_spec_example.py --check

bench: deps
	bash Benchmarks/format/run.sh
	bash Benchmarks/base/run.sh
	bash Benchmarks/subject/run.sh
	bash Benchmarks/unet/run.sh
	bash Benchmarks/generate/run.sh
	bash Benchmarks/hyper/run.sh
	bash Benchmarks/finetune/run.sh

# lidb's exports loaded by diffusers' own loaders (needs the pinned Python venv).
check-exports: deps
	swift build -c release --product lidb
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/checks/check_exports.py "$$(swift build -c release --show-bin-path)/lidb"
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/checks/check_lora_exports.py "$$(swift build -c release --show-bin-path)/lidb"
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/checks/check_python_diffusers.py "$$(swift build -c release --show-bin-path)/lidb"
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/checks/check_finetune.py "$$(swift build -c release --show-bin-path)/lidb"

fuzz: deps
	bash Fuzz/run.sh

# The structure-aware target for subjects, base configs and hypernetwork configs (Fuzz/README.md).
fuzz-semantic: deps
	FUZZ_TARGETS=semantic bash Fuzz/run.sh

# Reference fixtures and samples (need the pinned Python venv: converters/setup_venv.sh). The samples
# come first: the personalisation fixtures are computed from them.
fixtures: samples
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_format_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_pickle_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_base_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_layer_tables.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_merge_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_lora_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_tokenizer_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_rng_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_scheduler_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_text_encoder_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_unet_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_pipeline_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_image_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_hyper_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_personalize_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_finetune_fixtures.py
	# after make_finetune_fixtures.py, which clears the folder's .safetensors files
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_optim_fixtures.py
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/fixtures/make_compute_fixtures.py
samples: deps
	swift build -c release --product lidb
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/samples/make_samples.py "$$(swift build -c release --show-bin-path)/lidb"

# The trained sample world (issue 14; converters/world/README.md): renderer, attribute reader, tiny SD
# pipeline. Each stage is skipped when its outputs exist and resumes from its checkpoint in
# $$LIDB_WORLD_SCRATCH (default ~/.cache/lidb-world) when interrupted.
world:
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/world/make_world.py

# lidb runs the world pipeline: convert, generate held-out captions, read them (LIDB_BIN: a built lidb).
check-world:
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/world/check_lidb.py "$${LIDB_BIN:-$$(swift build --show-bin-path)/lidb}"

# Issue 14's personalisation table on the world (converters/world/eval_world.py): base, hypernetwork
# prediction, fast finetune, LiDB from scratch, read by the attribute reader. LIDB_BIN: a built lidb
# (default: the release build, built first); EVAL_CONDITIONS: a subset, e.g. b,c (the others are
# carried over from samples/world/eval-world.json). Cached in $$LIDB_WORLD_SCRATCH/eval-world.
eval-world:
	@test -n "$${LIDB_BIN:-}" || swift build -c release --product lidb
	"$${LIDB_VENV:-$$HOME/.cache/lidb-venv}/bin/python" converters/world/eval_world.py "$${LIDB_BIN:-$$(swift build -c release --show-bin-path)/lidb}" --conditions "$${EVAL_CONDITIONS:-a,b,c,c-lr1e-3,d40,d160}"

clean:
	rm -rf .build demo-output
