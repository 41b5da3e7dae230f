# One-command set-up: every target installs what it needs first, and is quick when all of it
# is already there.

# Debian's own Python: every local user can run it (the mount is used, and afsfuse-ctl run,
# by unprivileged users too), and a system service should not depend on a per-user build.
PYTHON ?= /usr/bin/python3
VENV := .venv
STAMPS := .stamps
PY := $(VENV)/bin/python

# Debian 12 packages: Python, OpenAFS servers and tools for the test cell, MIT Kerberos, FUSE
# and the headers pyfuse3 and the krb5 bindings build against, tshark for protocol checks and
# strace to see what a program asks the mount for.
DEBIAN_PACKAGES := \
	python3 python3-venv python3-dev \
	openafs-fileserver openafs-dbserver openafs-client openafs-krb5 \
	krb5-kdc krb5-admin-server krb5-user libkrb5-dev \
	fuse3 libfuse3-dev libsystemd-dev pkg-config gcc libc6-dev \
	iproute2 procps util-linux tshark attr strace git tmux \
	dh-virtualenv debhelper dpkg-dev mmdebstrap systemd-container man-db

.PHONY: all deps venv test unit unit-source lint demo bench soak deb wheel clean

all: test

deps:
	@scripts/install-debian-packages $(DEBIAN_PACKAGES)
	@scripts/fuse-device

# The editable install leaves the Rx modules Python; the next rule compiles them in place.
$(STAMPS)/venv: pyproject.toml setup.py | deps
	@mkdir -p $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	AFSFUSE_COMPILE=0 $(PY) -m pip install --quiet -e '.[test]'
	@touch $@

# The compiled parts (setup.py: the fcrypt accelerator, and the Rx modules mypyc compiles),
# built beside their source and rebuilt whenever an Rx source changes: a compiled module
# left older than its source would run instead of it (--force: a rebuild is always newer
# than the sources, even when an edit left mypyc's C unchanged).  AFSFUSE_COMPILE=0 keeps
# the Rx modules Python (the fcrypt accelerator is still built).
RX_SOURCES := $(wildcard afsfuse/rx/*.py) afsfuse/rx/_fcrypt.c

$(STAMPS)/compiled: $(STAMPS)/venv $(RX_SOURCES)
	find afsfuse -name '*.so' ! -name '_fcrypt.*' -delete
	$(PY) setup.py --quiet build_ext --inplace --force
	@touch $@

venv: deps $(STAMPS)/venv $(STAMPS)/compiled

lint: venv
	$(VENV)/bin/ruff check afsfuse tests bench
	$(VENV)/bin/ruff format --check afsfuse tests bench
	$(VENV)/bin/mypy

# The whole suite, integration tests against a real cell included (needs root); the Debian
# package and the wheel are built first, since tests install them into fresh Debian 12 roots.
# The unit tests run twice: on the Python source (unit-source) and compiled, with the rest.
test: venv lint deb wheel unit-source
	$(VENV)/bin/pytest -ra

unit: venv
	$(VENV)/bin/pytest -ra tests/unit

# The unit tests on the Python source alone: a copy of the tracked files without the
# modules mypyc compiled (the fcrypt accelerator, with its own reference, is copied along).
SOURCE_TREE := build/source

unit-source: venv
	rm -rf $(SOURCE_TREE) && mkdir -p $(SOURCE_TREE)
	git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c | tar -x -C $(SOURCE_TREE)
	cp afsfuse/rx/_fcrypt.*.so $(SOURCE_TREE)/afsfuse/rx/ 2>/dev/null || true
	cd $(SOURCE_TREE) && AFSFUSE_COMPILE=0 PYTHONPATH=$(CURDIR)/$(SOURCE_TREE) \
		$(CURDIR)/$(VENV)/bin/pytest -ra -p no:cacheprovider tests/unit

# Start a local cell and open a shell to look at it; leaving the shell (or Ctrl-C) tears it down.
demo: venv
	$(PY) -m afsfuse.testing.cell run -- scripts/demo-shell

# afsfuse beside OpenAFS's afsd.fuse on a local cell (needs root; never part of `test`).
# `make bench BENCH=quick` runs a short version; BENCH_ARGS passes more options to bench/run.py
# (e.g. BENCH_ARGS="--only create,tar-x --profile bench/results/profile").  afsd.fuse comes
# from openafs-fuse and py-spy from the bench extra, needed by this target only.
$(STAMPS)/bench: $(STAMPS)/venv
	@scripts/install-debian-packages openafs-fuse
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $@

bench: venv $(STAMPS)/bench
	$(PY) bench/run.py $(if $(filter quick,$(BENCH)),--quick) $(BENCH_ARGS)

# Two afsfuse mounts of a local cell under mixed load, every byte read checked and both
# daemons' RSS watched (needs root; never part of `test`).  Ten minutes unless
# SOAK_ARGS="--minutes N" says otherwise.
soak: venv
	$(PY) bench/soak.py $(SOAK_ARGS)

# The wheel that `pip install` and `pipx install` take: build/wheel/afsfuse-*.whl.  Built
# from the tracked files (with their changes) in build/wheel-src, as the Debian package is:
# setuptools packs whatever its build directory holds, and the checkout's may hold modules
# compiled earlier under other names.
wheel: venv
	rm -rf build/wheel build/wheel-src && mkdir -p build/wheel-src
	git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c | tar -x -C build/wheel-src
	$(PY) -m pip wheel --quiet --no-deps -w build/wheel build/wheel-src

# The Debian package, built by dh-virtualenv from the tracked files (with their changes) in
# build/deb, so nothing is written beside the checkout: build/deb/afsfuse_*.deb.
DEB_VERSION = $(shell dpkg-parsechangelog -l debian/changelog -S Version)
DEB_SRC := build/deb/afsfuse-$(DEB_VERSION)

deb: deps
	rm -rf build/deb && mkdir -p $(DEB_SRC)
	git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c | tar -x -C $(DEB_SRC)
	cd $(DEB_SRC) && dpkg-buildpackage -b -us -uc
	@ls build/deb/afsfuse_*.deb

clean:
	rm -rf $(VENV) $(STAMPS) build *.egg-info
