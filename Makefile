# LoRA Loom — one entry point. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV_PY := .venv/bin/python
PYTEST := .venv/bin/pytest
RUFF := .venv/bin/ruff

.PHONY: setup setup-upstream models world browser demo serve screenshots test test-unit test-comfy test-comfy-upstream test-browser test-server test-server-upstream test-gpu lint format bench clean

setup:            ## venv + ComfyUI (pinned 0.3.75, or COMFYUI_DIR) + the pack linked into custom_nodes
	@$(PYTHON) scripts/bootstrap.py

setup-upstream: setup   ## upstream ComfyUI (0.28.2 from ../shared/comfyui, or COMFYUI_UPSTREAM_DIR) in .venv-upstream
	@$(PYTHON) scripts/bootstrap.py --upstream

models: setup     ## small seeded stand-in models (cached in .runtime/models)
	@$(VENV_PY) scripts/make_models.py
world: setup      ## re-train the tiny world model on the CPU (scripts/make_world.py; its result is committed)
	$(VENV_PY) scripts/make_world.py

browser:          ## Debian's chromium for the browser tier (apt-get as root or with sudo; skipped when there is one)
	@$(PYTHON) scripts/bootstrap.py --browser

demo: models      ## run the example workflows on a headless ComfyUI; PNGs land in ./output
	@$(VENV_PY) scripts/demo.py

serve: models     ## ComfyUI with the pack for the browser (LOOM_PORT, default 8188)
	@$(VENV_PY) scripts/comfy_server.py

screenshots: models browser   ## README screenshots of example_workflows/ from the real UI -> docs/screenshots/
	$(VENV_PY) scripts/screenshots.py --run

lint: setup
	$(RUFF) check .
	$(RUFF) format --check .

format: setup
	$(RUFF) check --fix .
	$(RUFF) format .

# Each tier runs in its own process: the unit tier must not see ComfyUI, ComfyUI must not see the repo root.
test-unit: setup
	$(PYTEST) tests/unit -q
test-comfy: models
	$(PYTEST) tests/comfy -q
test-browser: models browser   ## the web UI in Chromium (Playwright) against a real server
	$(PYTEST) tests/browser -q -rx
test-server: models
	$(PYTEST) tests/server -q
# The same tiers on upstream ComfyUI (dynamic VRAM, the weight-patch protocol, its own LoRA nodes), in its own venv;
# skipped with one line when no upstream tree is found. Tests marked `pinned_only` (version-independent and slow:
# learning runs, soak) run on the pinned tree alone.
test-comfy-upstream: models setup-upstream
	@$(PYTHON) scripts/upstream_tier.py tests/comfy -q -m "not pinned_only"
test-server-upstream: models setup-upstream
	@$(PYTHON) scripts/upstream_tier.py tests/server -q -m "not pinned_only"
test-gpu: models  ## skipped without CUDA; run on a GPU machine
	$(PYTEST) tests/gpu -q -rs

# GPU tier first: on CI it only reports skips, and the run should end on the tiers that execute tests. The tiers run
# one after another: on CI's 2 cores the CPU-bound ones already use both (side by side they were no faster).
test: lint test-gpu test-unit test-comfy test-comfy-upstream test-browser test-server test-server-upstream   ## everything CI runs

bench: models
	$(VENV_PY) bench/patch.py --json

clean:            ## remove generated models and outputs (keeps the venv and ComfyUI)
	rm -rf .runtime/models .runtime/server output
