# The two commands of the README: `make run` and `make test`. Both do all the set-up first.
.PHONY: setup run run-isolated test test-postgres test-fast lint bench bench-turns clean

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
	$(MAKE) --no-print-directory test-postgres

# The store, tasks and web tests once more on a real PostgreSQL server (Debian's package,
# started by the fixtures): migrations, advisory locks, upserts and races where writes overlap.
test-postgres:
	scripts/netns-run .venv/bin/pytest -q --db postgresql -m "not browser and not slow" \
		tests/store tests/tasks tests/web tests/live/test_recorder.py

# No servers, no models: about a minute and a half on two cores.
test-fast:
	.venv/bin/pytest -q -m "not integration and not browser and not slow"

bench: setup
	scripts/netns-run .venv/bin/python -m bench.speech
	scripts/netns-run .venv/bin/python -m bench.avatar
	.venv/bin/python -m bench.brain

# Turn-taking on a corpus of voices that are not the agent's (renders it first; needs the
# Debian voice engines that `scripts/setup.sh --bench` installs).
bench-turns:
	scripts/setup.sh --bench
	HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.endpoint
	HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.stt_cost
	scripts/netns-run .venv/bin/python -m bench.turns.call

clean:
	rm -rf .venv .tools var test-artifacts
