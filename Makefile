# Everyday targets. `make demo` and `make test` install first (once: .installed stamps it).
PY ?= python3
.PHONY: install demo test test-slow lint format bench bench-data

# A stamp left by another environment (this checkout kept, the packages gone) is not trusted:
# when this Python cannot find the installed kernels package, the install runs again.
ifneq ($(shell $(PY) -c "import importlib.util as u; print(u.find_spec('lensperf_kernels') is not None)" 2>/dev/null),True)
.PHONY: .installed
endif

.installed: pyproject.toml
	$(PY) -m pip install -q torch==2.13.0  # the CPU build; unpinned torch pulls 5.5 GB of CUDA
	$(PY) -m pip install -q -e ".[dev]"
	touch .installed

install: .installed

demo: .installed
	lensperf demo --out demo_out

test: .installed
	$(PY) -m pytest -q

test-slow: .installed
	$(PY) -m pytest -q -m slow

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .

bench: .installed
	$(PY) -m pytest benchmarks --benchmark-only -q

# The data benchmarks at full DeepLense size (about 20 minutes on 2 cores).
bench-data: .installed
	$(PY) benchmarks/full_size_data.py
