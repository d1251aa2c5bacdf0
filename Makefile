# omnimemory-learner from a source checkout, for the current user.
#   make install            a venv with the package, then `omnimemory-learner service install`
#   make uninstall          `service uninstall`, then the venv; PURGE=1 also removes state and logs
#   make test / lint / run / bench / soak (reliability long forms)
# The Debian package is built with dpkg-buildpackage (debian/); pipx users run
# `omnimemory-learner service install` themselves: one installer for all three.

PYTHON     ?= python3
LIBDIR     ?= $(HOME)/.local/lib/omnimemory-learner
VENV       ?= $(LIBDIR)/venv
BINDIR     ?= $(HOME)/.local/bin
LABEL      := com.omnimemory.learner
UNITS      := omnimemory-learner.service omnimemory-learner-logrotate.service omnimemory-learner-logrotate.timer
# START=0 writes the files without enabling or starting the service.
START      ?= 1
PIP_FLAGS  ?=

.PHONY: all setup install uninstall test test-quick lint run bench bench-full soak clean

all: setup

# Development set-up: the package and test tools for this Python.
setup:
	$(PYTHON) -m pip install --quiet -e '.[test,lint]'

# Runs as the tests and CI run it; systemd tests start their own user manager.
test:
	$(PYTHON) -m pytest -ra

test-quick:
	$(PYTHON) -m pytest -ra -m 'not systemd and not slow'

# ruff (rules and format) and mypy (settings in pyproject.toml), the man pages, the units and the plist.
lint:
	$(PYTHON) -m ruff check omnimemory_learner tests bench setup.py
	$(PYTHON) -m ruff format --check omnimemory_learner tests bench setup.py
	$(PYTHON) -m mypy
	mandoc -Tlint -Wwarning man/omnimemory-learner.1 man/omnimemory-learner.toml.5
	@# The units as an install writes them, with a stand-in executable; any finding fails.
	@tmp=$$(mktemp -d) && mkdir $$tmp/bin && printf '#!/bin/sh\n' > $$tmp/bin/omnimemory-learner && chmod +x $$tmp/bin/omnimemory-learner && \
	  for unit in $(UNITS); do sed -e "s|@BINDIR@|$$tmp/bin|g" -e 's|@LOGDIR@|/tmp|g' -e 's|@STATEDIR@|/tmp|g' \
	    -e 's|@CONFDIR@|/tmp|g' packaging/systemd/$$unit > $$tmp/$$unit; done && \
	  out=$$(cd $$tmp && systemd-analyze verify --man=no $(UNITS) 2>&1); rc=$$?; rm -rf $$tmp; \
	  if [ $$rc -ne 0 ] || [ -n "$$out" ]; then echo "$$out"; echo "systemd-analyze verify failed" >&2; exit 1; fi
	$(PYTHON) -c "import plistlib,sys; plistlib.load(open('packaging/launchd/$(LABEL).plist','rb'))"

run:
	$(PYTHON) -m omnimemory_learner run

bench:
	$(PYTHON) bench/run.py --quick

bench-full:
	$(PYTHON) bench/run.py

# The reliability suite's long forms: 100 SIGKILLs, larger writers, an hour of soak.
soak:
	RELIABILITY_LONG=1 $(PYTHON) -m pytest -ra -s tests/reliability

install:
	@test -n "$(HOME)" || { echo "HOME is not set" >&2; exit 1; }
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_FLAGS) .
	install -d $(BINDIR)
	ln -sf $(VENV)/bin/omnimemory-learner $(BINDIR)/omnimemory-learner
	$(VENV)/bin/omnimemory-learner service install $(if $(filter 0,$(START)),--no-start)

uninstall:
	@# The installer in the venv removes what it wrote; without a venv, this checkout's copy does.
	if [ -x $(VENV)/bin/omnimemory-learner ]; then $(VENV)/bin/omnimemory-learner service uninstall $(if $(filter 1,$(PURGE)),--purge); \
	else $(PYTHON) -m omnimemory_learner service uninstall $(if $(filter 1,$(PURGE)),--purge); fi
	if [ "$$(readlink $(BINDIR)/omnimemory-learner)" = "$(VENV)/bin/omnimemory-learner" ]; then rm -f $(BINDIR)/omnimemory-learner; fi
	rm -rf $(LIBDIR)

clean:
	rm -rf build dist *.egg-info .pytest_cache bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
