.PHONY: install test test-slow lint format bench demo

install:
	python3 -m pip install torch==2.13.0
	python3 -m pip install -e ".[dev]"

test:
	python3 -m pytest -q

test-slow:
	python3 -m pytest -q -m slow

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .

bench:
	python3 -m pytest benchmarks --benchmark-only -q

demo:
	lensperf demo --out demo_out
