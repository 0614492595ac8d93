# Gramine-SGX targets, included by the top-level Makefile; run from the repository root on a
# machine with SGX and Gramine (deploy/gramine/README.md):
#
#   make gramine-manifest    render build/gramine/enclave-infer.manifest (and enclave.json)
#   make gramine-sgx-sign    measure and sign it; prints MRENCLAVE, the value clients pin with C:
#   make gramine-sgx         run the enclave (then start the host with serve --enclave)
#
# Everything in the enclave's Python environment is hashed into MRENCLAVE, so by default it gets
# an environment of its own (GRAMINE_VENV) with only the runtime dependencies and a regular,
# non-editable install of this package. GRAMINE_VENV=.venv works too, but measures torch & co.

GRAMINE_OUT      ?= build/gramine
OWNER_PUB        ?= owner.key.pub
ENCLAVE_CONFIG   ?=
ENCLAVE_DATA     ?= enclave-data
ENCLAVE_PORT     ?= 7001
SGX_SIGNING_KEY  ?= $(HOME)/.config/gramine/enclave-key.pem
GRAMINE_PYTHON   ?= python3.11
GRAMINE_VENV     ?= $(GRAMINE_OUT)/venv

GRAMINE_TEMPLATE := deploy/gramine/enclave-infer.manifest.template
GRAMINE_APP      := enclave-infer
GRAMINE_MANIFEST := $(GRAMINE_OUT)/$(GRAMINE_APP).manifest
GRAMINE_SIG      := $(GRAMINE_OUT)/$(GRAMINE_APP).sig
GRAMINE_STAMP    := $(GRAMINE_VENV)/.installed-stamp
GRAMINE_DOCS     := https://gramine.readthedocs.io/en/stable/installation.html

.PHONY: gramine-venv gramine-manifest gramine-sgx-sign gramine-sgx

# $(call gramine_require,TOOL): stop with a clear message when a Gramine tool is missing.
define gramine_require
	@command -v $(1) >/dev/null 2>&1 || { \
	  echo "gramine.mk: '$(1)' not found: install Gramine with SGX support ($(GRAMINE_DOCS))" >&2; \
	  exit 1; }
endef

# The enclave's Python environment; the package is reinstalled (a copy, not an editable link)
# whenever its sources change, since the copy in site-packages is what gets measured.
$(GRAMINE_STAMP): pyproject.toml $(shell find src/enclave_infer -name '*.py' 2>/dev/null)
	$(GRAMINE_PYTHON) -m venv $(GRAMINE_VENV)
	$(GRAMINE_VENV)/bin/pip install -q --disable-pip-version-check --upgrade pip
	$(GRAMINE_VENV)/bin/pip install -q --disable-pip-version-check .
	$(GRAMINE_VENV)/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall .
	touch $@

gramine-venv: $(GRAMINE_STAMP)

# The renderer prints one shell-quoted -D argument per line: joined into one line, then eval
# undoes the quoting. (A bare $$(...) would also do, for paths without spaces or quotes.)
# Stops if the renderer fails (bad configuration, no owner key) before gramine-manifest runs.
gramine-manifest: $(GRAMINE_STAMP)
	$(call gramine_require,gramine-manifest)
	@mkdir -p $(GRAMINE_OUT)
	defines="$$($(GRAMINE_VENV)/bin/enclave-infer gramine-manifest \
	    $(if $(wildcard $(OWNER_PUB)),--owner-public-key $(OWNER_PUB)) \
	    $(if $(ENCLAVE_CONFIG),--config $(ENCLAVE_CONFIG)) \
	    --data-dir $(ENCLAVE_DATA) --port $(ENCLAVE_PORT) --out $(GRAMINE_OUT))" && \
	defines="$$(printf '%s' "$$defines" | tr '\n' ' ')" && \
	eval "gramine-manifest $$defines $(GRAMINE_TEMPLATE) $(GRAMINE_MANIFEST)"
	@echo "wrote $(GRAMINE_MANIFEST) and $(GRAMINE_OUT)/enclave.json"

# Hashes every trusted file into the .manifest.sgx, computes MRENCLAVE, signs SIGSTRUCT (.sig).
gramine-sgx-sign: gramine-manifest
	$(call gramine_require,gramine-sgx-sign)
	$(call gramine_require,gramine-sgx-sigstruct-view)
	@test -f "$(SGX_SIGNING_KEY)" || { \
	  echo "gramine.mk: no SGX signing key at $(SGX_SIGNING_KEY): run gramine-sgx-gen-private-key" >&2; \
	  echo "  (or set SGX_SIGNING_KEY=...; this key's hash is the MRSIGNER clients pin with S:)" >&2; \
	  exit 1; }
	gramine-sgx-sign --key "$(SGX_SIGNING_KEY)" --manifest $(GRAMINE_MANIFEST) \
	    --output $(GRAMINE_MANIFEST).sgx --sigfile $(GRAMINE_SIG)
	@gramine-sgx-sigstruct-view --output-format=toml $(GRAMINE_SIG) > $(GRAMINE_OUT)/sigstruct.toml
	@cat $(GRAMINE_OUT)/sigstruct.toml
	@echo
	@sed -n 's/^mr_enclave = "\([0-9a-fA-F]*\)"$$/Clients pin this build with:   C:\1/p' $(GRAMINE_OUT)/sigstruct.toml
	@signer=$$(sed -n 's/^mr_signer = "\([0-9a-fA-F]*\)"$$/\1/p' $(GRAMINE_OUT)/sigstruct.toml); \
	  prod=$$(sed -n 's/^isv_prod_id = \([0-9]*\)$$/\1/p' $(GRAMINE_OUT)/sigstruct.toml); \
	  echo "or any build of this signer:   S:$$signer PROD:$$prod"
	@! grep -q '^debug_enclave = true' $(GRAMINE_OUT)/sigstruct.toml || \
	  echo "gramine.mk: warning: this is a DEBUG enclave (debug = true): its memory is readable, clients see INSECURE" >&2

# Runs in the foreground; Ctrl-C or SIGTERM stops it. The sealed folder must exist beforehand.
gramine-sgx:
	$(call gramine_require,gramine-sgx)
	@test -f $(GRAMINE_MANIFEST).sgx -a -f $(GRAMINE_SIG) || { \
	  echo "gramine.mk: no signed enclave in $(GRAMINE_OUT): run 'make gramine-sgx-sign' first" >&2; \
	  exit 1; }
	mkdir -p $(ENCLAVE_DATA)/sealed
	cd $(GRAMINE_OUT) && gramine-sgx $(GRAMINE_APP)

# Included before the Makefile's own rules, these must not become its default goal.
ifeq ($(.DEFAULT_GOAL),$(GRAMINE_STAMP))
.DEFAULT_GOAL :=
endif
