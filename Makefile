# triage: developer entry points. GNU make; the virtual environment is .venv in the repo root.
#
#   make demo    the main job end to end on synthetic studies: synthesize, train, export, predict (demo-out/)
#   make test    lint, then the test suite (pytest -n auto)
#   make lint    ruff check . and mypy (strict on triage/ and on the packages' command modules)
#   make bench   benchmarks/bench_synth.py
#   make bench-cascade  end-to-end cascade benchmark (docs/speed.md; ~8 min on 2 quiet cores)
#   make lock    regenerate constraints.txt (full lock of .[training,serving,dicomweb,scale,dev], Python 3.11)
#   make clean   remove .venv and demo-out
#
# Installs are pip with the lock as constraints, and remembered by a stamp file per extras set,
# .venv/.installed-<extras> (extras joined by '-'; no extras: .venv/.installed-), which is redone
# only when pyproject.toml or constraints.txt changes.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints.txt

# Extras that `make test` and `make lint` install (comma-separated, as pip writes them).
# training (torch, timm, smp) is needed by tests/training; tests/triage runs with it blocked.
TEST_EXTRAS := dev,serving,dicomweb,training,scale
# `make bench` needs only the runtime (no extras); `make demo` trains its models (the training extra).
RUNTIME_EXTRAS :=
DEMO_EXTRAS := training

comma := ,
# $(call stamp,EXTRAS): the stamp file for a comma-separated extras list.
stamp = $(VENV)/.installed-$(subst $(comma),-,$(1))

TEST_STAMP := $(call stamp,$(TEST_EXTRAS))
DEMO_STAMP := $(call stamp,$(DEMO_EXTRAS))
RUNTIME_STAMP := $(call stamp,$(RUNTIME_EXTRAS))

DEMO_OUT := demo-out

.PHONY: help test lint demo bench bench-cascade lock clean dcmtk

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

# --- environment -------------------------------------------------------------------------------

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp for a non-empty extras set: the stem is the extras joined by '-'.
$(VENV)/.installed-%: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --no-input -c $(CONSTRAINTS) -e '.[$(subst -,$(comma),$*)]'
	touch $@

# Stamp for the runtime alone (a pattern rule cannot have an empty stem).
$(VENV)/.installed-: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --no-input -c $(CONSTRAINTS) -e .
	touch $@

# dcmtk (dcmdump, storescu, echoscu, dcmcjpeg, ...), dicom3tools (dciodvfy), openjph-tools (ojph_compress:
# an independent HTJ2K encoder) and orthanc (the PACS of the service tests) are used by the DICOM
# interoperability tests; orthanc-dicomweb (its DICOMweb plugin: STOW-RS / QIDO-RS / WADO-RS) is used by the
# DICOMweb tests. apt-get must not start the orthanc system service: if no policy-rc.d forbids it
# (Docker's Debian images ship one), one is put in place for the install and removed again.
dcmtk:
	@pkgs=""; \
	command -v dcmdump >/dev/null 2>&1 || pkgs="$$pkgs dcmtk"; \
	command -v dciodvfy >/dev/null 2>&1 || pkgs="$$pkgs dicom3tools"; \
	command -v ojph_compress >/dev/null 2>&1 || pkgs="$$pkgs openjph-tools"; \
	command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || pkgs="$$pkgs orthanc"; \
	[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || pkgs="$$pkgs orthanc-dicomweb"; \
	if [ -n "$$pkgs" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "installing Debian package(s)$$pkgs for the interoperability tests"; \
	        export DEBIAN_FRONTEND=noninteractive; \
	        policy=""; \
	        if [ ! -e /usr/sbin/policy-rc.d ]; then \
	            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
	            policy=/usr/sbin/policy-rc.d; \
	        fi; \
	        rc=0; apt-get update -q && apt-get install -y -q --no-install-recommends $$pkgs || rc=$$?; \
	        if [ -n "$$policy" ]; then rm -f "$$policy"; fi; \
	        exit $$rc; \
	    else \
	        echo "hint: missing$$pkgs; install with sudo apt-get install --no-install-recommends$$pkgs - tests that need them will not run"; \
	    fi; \
	fi

# --- checks ------------------------------------------------------------------------------------

# The commands of training/, export/ and serving/ hand typed option sets to their bodies: checked strictly,
# the rest of those packages only followed (silent).
CLI_MODULES = training/cli.py training/commands.py training/saliency/commands.py export/cli.py \
	export/commands.py serving/cli.py

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy --follow-imports=silent $(CLI_MODULES)

# Two pytest runs: the runtime suite (tests/triage) with torch, torchvision, timm, smp and fastai
# blocked from import (TRIAGE_BLOCK_TORCH=1, tests/conftest.py), proving triage/ runs without them;
# then everything else (--dist loadgroup: the tests of one xdist_group, such as tests/scale's two-node Ray
# cluster, share one worker). pytest exits 5 when it collected no tests: that is a failure here, with a
# message saying so.
test: $(TEST_STAMP) dcmtk lint
	@rc=0; TRIAGE_BLOCK_TORCH=1 $(BIN)/pytest -n auto tests/triage || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no runtime tests (exit 5)" >&2; fi; \
	rc2=0; $(BIN)/pytest -n auto --dist loadgroup tests --ignore=tests/triage || rc2=$$?; \
	if [ $$rc2 -eq 5 ]; then echo "ERROR: pytest collected no tests outside tests/triage (exit 5)" >&2; fi; \
	exit $$(( rc != 0 ? rc : rc2 ))

# --- demo, benchmarks --------------------------------------------------------------------------

# tools/demo.sh: 400 + 24 synthetic studies, train the classifier and the segmenter (preset small), export
# them to a bundle, triage the 24 studies. About 5.5 minutes on 2 CPU cores.
demo: $(DEMO_STAMP)
	tools/demo.sh $(DEMO_OUT)

bench: $(RUNTIME_STAMP)
	$(BIN)/python benchmarks/bench_synth.py

# The runtime vs the reference pipeline (PyTorch eager) vs the model-only floor: needs the training extra.
bench-cascade: $(TEST_STAMP)
	$(BIN)/python benchmarks/bench_cascade.py --variants fp32,int8 --json bench-cascade.json

# --- lock, clean -------------------------------------------------------------------------------

# Regenerates constraints.txt in a temp venv (several minutes, ~6.5 GB of temp disk for CUDA torch).
lock:
	PYTHON=$(PYTHON) bash tools/lock.sh $(CONSTRAINTS)

clean:
	rm -rf $(VENV) $(DEMO_OUT)
