# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install kailin with its extras, run the whole pipeline on the
#                 bundled sample (configs/demo.yaml; results in runs/demo), then write
#                 runs/demo/report.html (`kailin report`) and print its path
#   make test   - same set-up, then the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
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

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q --no-cache-dir "llama-cpp-python[server]>=0.3"
	$(PIP) install -q -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kailin run configs/demo.yaml
	@$(VENV)/bin/kailin report runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
