# make run / make test / make bench / make clean. The first two create .venv and install requirements.txt.
PYTHON ?= python3
VENV := .venv
ifeq ($(OS),Windows_NT)
PY := $(VENV)/Scripts/python.exe
else
PY := $(VENV)/bin/python
endif

.PHONY: run test bench clean

# Rebuilt whenever requirements.txt changes; the stamp marks a finished install.
$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The lesson: the notes' loop on the bundled data.
run: $(VENV)/installed
	$(PY) minitorch_loop.py

# -W error: a warning fails the suite. pytest exits with 5 when it collects no test, and make
# stops on any non-zero exit, 5 included.
test: $(VENV)/installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q -rs -W error

# Both programs' loops, loaders, CSV load and start-up beside their floors, measured side by
# side (not a test).
bench: $(VENV)/installed
	$(PY) bench.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis .ruff_cache __pycache__ minitorch_tool/__pycache__
