# The course's two commands:  `make lab` opens JupyterLab on the first lesson;  `make test` runs every test.
# Both create .venv on first use and are quick when nothing changed (the install is stamped).

PYTHON    ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
KERNEL    := attention-course
LAB_ARGS  ?=
PYTEST_ARGS ?=
FIRST_LESSON := $(firstword $(sort $(wildcard notebooks/[0-9]*.ipynb)))
# Jupyter refuses to start as root (containers, CI) unless told it may.
AS_ROOT   := $(if $(filter 0,$(shell id -u)),--allow-root,)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install sandbox lab test test-browser site lint format lock clean

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
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the pins or the package metadata change.
$(STAMP): requirements.txt constraints.txt pyproject.toml | $(PY)
	@$(MAKE) --no-print-directory sandbox
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Attention course (attnlib)" >/dev/null
	touch $(STAMP)

lab: install
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=. $(AS_ROOT) $(LAB_ARGS) $(FIRST_LESSON)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis site test-artifacts
