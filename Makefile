# omnimemory-learner: install for the current user (default) or, with
# PREFIX/DESTDIR, stage a system-wide install for a distribution package.
#   make install            user install; enables and starts the service
#   make uninstall          removes it all; PURGE=1 also removes state and logs
#   make test / lint / run / bench / soak (reliability long forms)

PYTHON     ?= python3
UNAME      := $(shell uname -s)
PREFIX     ?= $(HOME)/.local
DESTDIR    ?=
LIBDIR     ?= $(PREFIX)/lib/omnimemory-learner
VENV       ?= $(LIBDIR)/venv
BINDIR     ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
CONFDIR    ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/omnimemory
STATEDIR   ?= $(or $(XDG_STATE_HOME),$(HOME)/.local/state)/omnimemory-learner
LOGDIR     ?= $(HOME)/.omnimemory/logs
# A user install puts units where the user manager looks; a packager
# (PREFIX=/usr) wants $(PREFIX)/lib/systemd/user.
UNITDIR    ?= $(if $(filter $(HOME)/%,$(PREFIX)),$(or $(XDG_CONFIG_HOME),$(HOME)/.config)/systemd/user,$(PREFIX)/lib/systemd/user)
AGENTDIR   ?= $(HOME)/Library/LaunchAgents
LABEL      := com.omnimemory.learner
UNITS      := omnimemory-learner.service omnimemory-learner-logrotate.service omnimemory-learner-logrotate.timer
# Set to 0 to install files without touching the service manager (packagers).
START      ?= $(if $(DESTDIR),0,1)
PIP_FLAGS  ?=

SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@LOGDIR@|$(LOGDIR)|g' \
            -e 's|@STATEDIR@|$(STATEDIR)|g' -e 's|@CONFDIR@|$(CONFDIR)|g'

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

# ruff and mypy (rules in pyproject.toml), the man pages, the units and the plist.
lint:
	$(PYTHON) -m ruff check omnimemory_learner tests bench
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
	$(PYTHON) -m venv --system-site-packages $(DESTDIR)$(VENV)
	$(DESTDIR)$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_FLAGS) .
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5
	ln -sf $(VENV)/bin/omnimemory-learner $(DESTDIR)$(BINDIR)/omnimemory-learner
	install -m 0644 man/omnimemory-learner.1 $(DESTDIR)$(MANDIR)/man1/omnimemory-learner.1
	install -m 0644 man/omnimemory-learner.toml.5 $(DESTDIR)$(MANDIR)/man5/omnimemory-learner.toml.5
	install -d -m 0700 $(DESTDIR)$(CONFDIR) $(DESTDIR)$(LOGDIR)
	$(SUBST) packaging/logrotate/omnimemory-learner > $(DESTDIR)$(CONFDIR)/logrotate.conf
ifeq ($(UNAME),Darwin)
	install -d $(DESTDIR)$(AGENTDIR)
	$(SUBST) packaging/launchd/$(LABEL).plist > $(DESTDIR)$(AGENTDIR)/$(LABEL).plist
	plutil -lint $(DESTDIR)$(AGENTDIR)/$(LABEL).plist
	if [ "$(START)" = 1 ]; then \
	  launchctl bootout gui/$$(id -u)/$(LABEL) 2>/dev/null || true; \
	  launchctl bootstrap gui/$$(id -u) $(AGENTDIR)/$(LABEL).plist; fi
else
	install -d $(DESTDIR)$(UNITDIR)
	for unit in $(UNITS); do $(SUBST) packaging/systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit; done
	if [ "$(START)" = 1 ]; then \
	  systemctl --user daemon-reload && \
	  systemctl --user enable omnimemory-learner.service omnimemory-learner-logrotate.timer && \
	  systemctl --user restart omnimemory-learner.service && \
	  systemctl --user start omnimemory-learner-logrotate.timer; fi
endif
	@echo "Installed. Status: omnimemory-learner status; logs: see omnimemory-learner(1)."

uninstall:
ifeq ($(UNAME),Darwin)
	-if [ "$(START)" = 1 ]; then launchctl bootout gui/$$(id -u)/$(LABEL) 2>/dev/null; fi
	rm -f $(DESTDIR)$(AGENTDIR)/$(LABEL).plist
else
	-if [ "$(START)" = 1 ]; then \
	  systemctl --user disable --now omnimemory-learner.service omnimemory-learner-logrotate.timer 2>/dev/null; fi
	for unit in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$unit; done
	rm -f $(DESTDIR)$(HOME)/.local/share/systemd/timers/stamp-omnimemory-learner-logrotate.timer
	-if [ "$(START)" = 1 ]; then systemctl --user daemon-reload 2>/dev/null; fi
endif
	rm -f $(DESTDIR)$(BINDIR)/omnimemory-learner
	rm -f $(DESTDIR)$(MANDIR)/man1/omnimemory-learner.1 $(DESTDIR)$(MANDIR)/man5/omnimemory-learner.toml.5
	rm -rf $(DESTDIR)$(LIBDIR)
	rm -f $(DESTDIR)$(CONFDIR)/logrotate.conf
	rmdir $(DESTDIR)$(CONFDIR) 2>/dev/null || true
	if [ "$(PURGE)" = 1 ]; then rm -rf $(DESTDIR)$(STATEDIR) $(DESTDIR)$(LOGDIR); \
	else echo "Kept state in $(STATEDIR) and logs in $(LOGDIR) (PURGE=1 removes them)."; fi

clean:
	rm -rf build dist *.egg-info .pytest_cache bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
