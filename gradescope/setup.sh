#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image (choose the Ubuntu 22.04 base image;
# it has Python 3.11 in its package archive). It installs the course's pinned environment into
# /autograder/source/.venv: the same pins as the course (requirements.txt, constraints.txt), torch from its CPU
# wheel index, bubblewrap for the grader's sandbox, and attnlib itself from this folder.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
apt-get update
apt-get install -y --no-install-recommends python3.11 python3.11-venv bubblewrap ca-certificates
python3.11 -m venv .venv
.venv/bin/python -m pip install -r requirements.txt -c constraints.txt
.venv/bin/python -m pip install --no-deps --no-build-isolation .
.venv/bin/python -m attnlib info
