# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# Pinned stack known to work on a CPU-only machine (see README "Installation").  The torchaudio fix runs
# only when torchaudio's compiled extension cannot load, so a CUDA machine keeps it.
$(STAMP): setup.cfg pyproject.toml constraints.txt asit_embed/doctor.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]" -c constraints.txt
	$(PY) -m asit_embed.doctor --fix
	$(PY) -c "import asit_embed, enroll"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart.py

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
