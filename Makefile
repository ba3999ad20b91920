# The two commands of the README: `make run` and `make test`. Both do all the set-up first.
.PHONY: setup run run-isolated test lint bench clean

setup:
	@scripts/setup.sh

run: setup
	.venv/bin/avatar up

# Everything inside a private network namespace (WebRTC never leaves the machine).
run-isolated: setup
	.venv/bin/avatar up --isolated

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

test: lint
	scripts/netns-run .venv/bin/pytest -q

bench: setup
	scripts/netns-run .venv/bin/python -m bench.speech
	scripts/netns-run .venv/bin/python -m bench.avatar
	.venv/bin/python -m bench.brain

clean:
	rm -rf .venv .tools var test-artifacts
