.PHONY: demo test bench lint bootstrap

bootstrap:
	./scripts/bootstrap.sh

demo:
	./scripts/bootstrap.sh && .venv/bin/pgrouter demo

test:
	./scripts/test.sh

bench:
	./scripts/bootstrap.sh --bench && .venv/bin/python benchmarks/run.py

lint:
	./scripts/bootstrap.sh
	.venv/bin/ruff check .
	.venv/bin/mypy
