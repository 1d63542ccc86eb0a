# Two entry points for a fresh Debian 12 / Python 3.11 machine (see README.md):
#   make demo   set everything up, then run the demo
#   make test   set everything up, then run the test suite (what CI runs)
# Python + ROS 2 wheels go to a virtual environment OUTSIDE the source tree
# (CMake refuses exported include paths inside it): $(VENV), default
# ~/.cache/geo_depth_node/venv; it holds only third-party packages, so clones
# may share it. The messages and the package are built by colcon into .colcon/.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= $(HOME)/.cache/geo_depth_node/venv
export GEO_DEPTH_VENV := $(VENV)
REQ_HASH := $(shell cat requirements.txt tools/patch_ros_wheels.py | sha1sum | cut -c1-12)
PIP_QUIET := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
COLCON := .colcon
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=
APT_PACKAGES := libusb-1.0-0 libgl1 libgomp1 proj-data libvulkan1 mesa-vulkan-drivers

.PHONY: setup apt venv build test demo lint clean

setup: build

# apt packages: Open3D needs libusb (and Vulkan + Mesa for offscreen rendering);
# proj-data ships the EGM96 geoid grid.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing apt packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

$(VENV)/.deps-$(REQ_HASH): | apt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip wheel 'setuptools<80' $(PIP_QUIET)
	$(VENV)/bin/python -m pip install -q -r requirements.txt $(PIP_QUIET)
	$(VENV)/bin/python tools/patch_ros_wheels.py
	rm -f $(VENV)/.deps-* && touch $@

venv: $(VENV)/.deps-$(REQ_HASH)

# Generate the custom messages and install the package (symlinked, so edits
# to existing Python files need no rebuild; new files do: `make build`).
build: venv
	@source $(VENV)/bin/activate && \
	export AMENT_PREFIX_PATH=$$VIRTUAL_ENV CMAKE_PREFIX_PATH=$$VIRTUAL_ENV && \
	colcon --log-base $(COLCON)/log build --symlink-install \
	  --build-base $(COLCON)/build --install-base $(COLCON)/install \
	  --event-handlers console_cohesion- summary- \
	  --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE=$$VIRTUAL_ENV/bin/python \
	  > $(COLCON)-build.log 2>&1 || { cat $(COLCON)-build.log; exit 1; }
	@# numba's disk cache is keyed on each kernel file alone: a kernel that calls one from
	@# another file would keep a stale copy of it, so a build drops the cache
	@find $(COLCON)/install -path '*geo_depth_node/core/__pycache__/*.nb[ic]' -delete
	@echo "built messages into $(COLCON)/install (log: $(COLCON)-build.log)"

test: build
	source tools/env.sh && pytest -ra $(PYTEST_ARGS) test

lint: venv
	$(VENV)/bin/ruff check geo_depth_node test tools launch

demo: build
	source tools/env.sh && geo-depth demo --out $(DEMO_OUT)

clean:
	rm -rf $(COLCON) $(COLCON)-build.log $(DEMO_OUT)
