# sslcache: build, install, test, demo.
#
#   make                      build sslcache_plugin.so for `uwsgi` on PATH
#   make UWSGI=/path/uwsgi    ... for that binary
#   make install              copy it into that binary's plugin directory
#   make deb                  uwsgi-plugin-sslcache_<version>_<arch>.deb for that binary
#   make test                 the whole test suite (installs what it needs)
#   make soak                 a 3-node cluster under load and faults, SOAK_MINUTES=N (default 10; not in `test`)
#   make demo                 a local cluster showing resumed sessions
#   make bench                benchmarks (figures in docs/BENCHMARKS.md)
#   make unit-test            the core crate's tests alone (no uWSGI, no libclang)
#   make core-alone           ... with uWSGI and libclang hidden (root; a mount namespace)
#   make fuzz                 fuzz the datagram decoder (needs cargo-fuzz)

UWSGI ?= $(shell command -v uwsgi 2>/dev/null)
CARGO ?= cargo
PLUGIN := sslcache_plugin.so

# Debian packages: the uWSGI binary and what bindgen needs to read its
# headers, the TLS and balancer tools the tests drive, the Python plugin used
# to reach the stats entry through uWSGI's cache API, dpkg-shlibdeps for
# `make deb`, Redis for replication through it, libfaketime for a node
# whose clock runs ahead (tests/tickets.rs).
DEB_PACKAGES := uwsgi-core uwsgi-plugin-python3 libclang-dev libssl-dev libpcre3-dev \
	zlib1g-dev libcap-dev uuid-dev pkg-config openssl haproxy iproute2 iptables binutils gnutls-bin \
	dpkg-dev redis-server libfaketime

# The plugin directory compiled into $(UWSGI) (its -DUWSGI_PLUGIN_DIR), where
# `plugins = sslcache` finds the plugin without a plugin-dir line.
UWSGI_PLUGIN_DIR = $(shell $(UWSGI) --cflags 2>/dev/null | tr ' ' '\n' | sed -n 's/^-DUWSGI_PLUGIN_DIR="\\"\(.*\)\\""$$/\1/p')

# uWSGI 2.0.31 built from PyPI's sdist, for the second binary under test.
PYPI_UWSGI_VERSION := 2.0.31
PYPI_DIR := target/pypi-uwsgi
PYPI_UWSGI := $(PYPI_DIR)/uwsgi-$(PYPI_UWSGI_VERSION)/uwsgi
PYPI_PLUGIN_DIR := $(PYPI_DIR)/plugin
# The same uWSGI built without SSL: sslcache must refuse to build for it.
PYPI_NOSSL_UWSGI := $(PYPI_DIR)/nossl/uwsgi-$(PYPI_UWSGI_VERSION)/uwsgi

.PHONY: all $(PLUGIN) install deb deb-pypi deps nextest test soak unit-test core-alone demo bench fuzz fuzz-build pypi-uwsgi clean

all: $(PLUGIN)

# The .so is replaced by a new file, never rewritten in place: running uWSGI
# processes map the old one (rewriting it under them crashes them).
$(PLUGIN):
	@test -n "$(UWSGI)" || { echo "no uwsgi binary: install uwsgi-core or pass UWSGI=/path/to/uwsgi" >&2; exit 1; }
	UWSGI=$(UWSGI) $(CARGO) build --release --lib
	cp target/release/libsslcache.so $(PLUGIN).new && mv -f $(PLUGIN).new $(PLUGIN)

install: $(PLUGIN)
	@dir="$(UWSGI_PLUGIN_DIR)"; \
	test -n "$$dir" || { echo "cannot find the plugin directory of $(UWSGI)" >&2; exit 1; }; \
	install -d "$$dir" && install -m 0644 $(PLUGIN) "$$dir/$(PLUGIN)" && echo "installed $$dir/$(PLUGIN)"

# Debian package, the way Debian packages uWSGI's plugins: the stripped
# plugin in $(UWSGI)'s plugin directory, depending on that binary's ABI
# (uwsgi-core provides uwsgi-abi-<md5 of uwsgi --dot-h>: a plugin reads the
# layout of uWSGI's structures, so it only works in the build it was made
# for) and on the libraries it links (dpkg-shlibdeps); README, docs/,
# copyright, changelog and the example configs under /usr/share/doc.
# Built without root (--root-owner-group); staged under $(DEB_BUILD).
DEB_NAME := uwsgi-plugin-sslcache
DEB_VERSION = $(shell sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_MAINTAINER ?= $(or $(shell git log -1 --format='%an <%ae>' 2>/dev/null),sslcache maintainers <root@localhost>)
# What is packaged and for which plugin directory; `deb-pypi` overrides both.
DEB_SO ?= $(PLUGIN)
DEB_PLUGIN_DIR ?= $(UWSGI_PLUGIN_DIR)
DEB_BUILD ?= target/deb
DEB_OUT ?= .
DEB_FILE = $(DEB_OUT)/$(DEB_NAME)_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_ROOT = $(DEB_BUILD)/debian/$(DEB_NAME)
DEB_DOC = $(DEB_ROOT)/usr/share/doc/$(DEB_NAME)
# The example configs (uWSGI inis, HAProxy's cfg), and the pages of docs/.
DEB_EXAMPLES = $(wildcard examples/configs/*)
DEB_DOCS = $(wildcard docs/*.md)

# No LICENSE file in the tree: Cargo.toml's `license = "MIT"`, in full.
DEB_YEAR = $(or $(shell git log -1 --format=%cd --date=format:%Y 2>/dev/null),$(shell date +%Y))
define DEB_COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: sslcache

Files: *
Copyright: $(DEB_YEAR) the sslcache authors
License: MIT

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a
 copy of this software and associated documentation files (the "Software"),
 to deal in the Software without restriction, including without limitation
 the rights to use, copy, modify, merge, publish, distribute, sublicense,
 and/or sell copies of the Software, and to permit persons to whom the
 Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included
 in all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL
 THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
 FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
 DEALINGS IN THE SOFTWARE.
endef
export DEB_COPYRIGHT

define DEB_DESCRIPTION
Description: distributed TLS session cache for uWSGI's HTTPS router
 sslcache brings back ssl-sessions-use-cache for uWSGI's HTTPS router:
 every router process of every node resumes every client's TLS session,
 by session id (TLS 1.2 without tickets) or with TLS 1.3, on whichever
 node a TCP balancer sends it to. Sessions are replicated between nodes
 over UDP, optionally sealed with a shared key.
 .
 Load it with one line in the uWSGI configuration: plugins = sslcache
endef
export DEB_DESCRIPTION

deb: $(DEB_SO)
	@test -n "$(UWSGI)" || { echo "no uwsgi binary: install uwsgi-core or pass UWSGI=/path/to/uwsgi" >&2; exit 1; }
	@case "$(DEB_PLUGIN_DIR)" in /*) ;; *) echo "the plugin directory of $(UWSGI) is \"$(DEB_PLUGIN_DIR)\", not an absolute path: pass DEB_PLUGIN_DIR=" >&2; exit 1;; esac
	@command -v dpkg-shlibdeps >/dev/null || { echo "dpkg-shlibdeps is missing: apt-get install dpkg-dev (or make deps)" >&2; exit 1; }
	rm -rf $(DEB_BUILD)/debian
	install -d -m 0755 $(DEB_ROOT)/DEBIAN $(DEB_ROOT)$(DEB_PLUGIN_DIR) $(DEB_DOC) $(DEB_OUT)
	install -m 0644 $(DEB_SO) $(DEB_ROOT)$(DEB_PLUGIN_DIR)/$(PLUGIN)
# As dh_strip: no symbol table, no debug sections; the plugin's entry symbol is dynamic, it stays.
	strip --strip-unneeded --remove-section=.comment --remove-section=.note $(DEB_ROOT)$(DEB_PLUGIN_DIR)/$(PLUGIN)
	chmod 0644 $(DEB_ROOT)$(DEB_PLUGIN_DIR)/$(PLUGIN)
	install -m 0644 README.md $(DEB_DOC)/README.md
	$(if $(DEB_DOCS),install -d -m 0755 $(DEB_DOC)/docs && install -m 0644 $(DEB_DOCS) $(DEB_DOC)/docs/)
	$(if $(DEB_EXAMPLES),install -d -m 0755 $(DEB_DOC)/examples && install -m 0644 $(DEB_EXAMPLES) $(DEB_DOC)/examples/)
	printf '%s\n' "$$DEB_COPYRIGHT" > $(DEB_DOC)/copyright
# A native package (no Debian revision): policy names its changelog changelog.gz. Dated by the
# last commit, so that two builds of one commit say the same.
	date=$$(git log -1 --format=%cD 2>/dev/null || date -R); \
	printf '%s\n' "$(DEB_NAME) ($(DEB_VERSION)) unstable; urgency=medium" "" \
		"  * sslcache $(DEB_VERSION) built for uWSGI $$($(UWSGI) --version)." "" \
		" -- $(DEB_MAINTAINER)  $$date" | gzip -9n > $(DEB_DOC)/changelog.gz
	chmod 0644 $(DEB_DOC)/copyright $(DEB_DOC)/changelog.gz
# dpkg-shlibdeps wants a debian/control to exist (it reads nothing from an empty one).
	: > $(DEB_BUILD)/debian/control
	set -e; \
	shlibs=$$(cd $(DEB_BUILD) && dpkg-shlibdeps -O debian/$(DEB_NAME)$(DEB_PLUGIN_DIR)/$(PLUGIN) | sed -n 's/^shlibs:Depends=//p'); \
	test -n "$$shlibs" || { echo "dpkg-shlibdeps found no dependency" >&2; exit 1; }; \
	abi=$$($(UWSGI) --dot-h | md5sum | cut -d' ' -f1); \
	test -n "$$abi" || { echo "$(UWSGI) --dot-h gave nothing" >&2; exit 1; }; \
	size=$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1); \
	{ \
		echo "Package: $(DEB_NAME)"; \
		echo "Version: $(DEB_VERSION)"; \
		echo "Architecture: $(DEB_ARCH)"; \
		echo "Maintainer: $(DEB_MAINTAINER)"; \
		echo "Installed-Size: $$size"; \
		echo "Depends: $$shlibs, uwsgi-abi-$$abi"; \
		echo "Section: httpd"; \
		echo "Priority: optional"; \
		printf '%s\n' "$$DEB_DESCRIPTION"; \
	} > $(DEB_ROOT)/DEBIAN/control
	cd $(DEB_ROOT) && find usr -type f | LC_ALL=C sort | xargs md5sum > DEBIAN/md5sums
	chmod 0644 $(DEB_ROOT)/DEBIAN/control $(DEB_ROOT)/DEBIAN/md5sums
	dpkg-deb --root-owner-group --build $(DEB_ROOT) $(DEB_FILE)
	dpkg-deb --info $(DEB_FILE)
	@if command -v lintian >/dev/null; then lintian $(DEB_FILE) || true; fi

# The plugin built for the PyPI binary, packaged for this machine's plugin
# directory: a package for another uWSGI ABI, which the test expects apt to
# refuse. Not `make deb UWSGI=...`: that rebuilds ./$(PLUGIN) for the PyPI
# binary, under the tests' feet.
DEB_PYPI_BUILD := target/deb-pypi
DEB_PYPI_FILE = $(DEB_PYPI_BUILD)/$(DEB_NAME)_$(DEB_VERSION)_$(DEB_ARCH).deb
deb-pypi: pypi-uwsgi
	$(MAKE) --no-print-directory deb UWSGI=$(abspath $(PYPI_UWSGI)) DEB_SO=$(PYPI_PLUGIN_DIR)/$(PLUGIN) \
		DEB_PLUGIN_DIR=$(UWSGI_PLUGIN_DIR) DEB_BUILD=$(DEB_PYPI_BUILD) DEB_OUT=$(DEB_PYPI_BUILD)

# Installs the Debian packages that are missing (needs root, as on CI).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(PYPI_UWSGI):
	mkdir -p $(PYPI_DIR)
	pip download --no-binary :all: --no-deps -q -d $(PYPI_DIR) uwsgi==$(PYPI_UWSGI_VERSION)
	tar -xzf $(PYPI_DIR)/uwsgi-$(PYPI_UWSGI_VERSION).tar.gz -C $(PYPI_DIR)
	cd $(PYPI_DIR)/uwsgi-$(PYPI_UWSGI_VERSION) && python3 uwsgiconfig.py --build > build.log 2>&1 || { tail -20 build.log; exit 1; }

$(PYPI_NOSSL_UWSGI): $(PYPI_UWSGI)
	mkdir -p $(PYPI_DIR)/nossl
	tar -xzf $(PYPI_DIR)/uwsgi-$(PYPI_UWSGI_VERSION).tar.gz -C $(PYPI_DIR)/nossl
	cd $(PYPI_DIR)/nossl/uwsgi-$(PYPI_UWSGI_VERSION) && UWSGI_PROFILE_OVERRIDE="ssl=false" python3 uwsgiconfig.py --build > build.log 2>&1 || { tail -20 build.log; exit 1; }

# The plugin built against the PyPI binary, in the same target directory
# (only build.rs and the plugin crate are built again, not the
# dependencies); after $(PLUGIN), which copied its own build first.
pypi-uwsgi: $(PLUGIN) $(PYPI_UWSGI) $(PYPI_NOSSL_UWSGI)
	UWSGI=$(abspath $(PYPI_UWSGI)) $(CARGO) build --release --lib
	mkdir -p $(PYPI_PLUGIN_DIR)
	cp target/release/libsslcache.so $(PYPI_PLUGIN_DIR)/$(PLUGIN).new
	mv -f $(PYPI_PLUGIN_DIR)/$(PLUGIN).new $(PYPI_PLUGIN_DIR)/$(PLUGIN)

# The core crate alone: no uWSGI, no libclang needed.
unit-test:
	$(CARGO) test --release -p sslcache-core

core-alone:
	tests/core-alone.sh

# Every test in a process of its own, several at once (cargo nextest;
# .config/nextest.toml says how many and which stay apart). The examples
# are built too, as `cargo test` would.
test: deps nextest $(PLUGIN) pypi-uwsgi fuzz-build deb deb-pypi
	$(CARGO) build --release --examples
	SSLCACHE_REQUIRE_ALL=1 \
	SSLCACHE_DEB=$(abspath $(DEB_FILE)) \
	SSLCACHE_DEB_OTHER_ABI=$(abspath $(DEB_PYPI_FILE)) \
	SSLCACHE_PYPI_UWSGI=$(abspath $(PYPI_UWSGI)) \
	SSLCACHE_PYPI_PLUGIN_DIR=$(abspath $(PYPI_PLUGIN_DIR)) \
	SSLCACHE_NOSSL_UWSGI=$(abspath $(PYPI_NOSSL_UWSGI)) \
	$(CARGO) nextest run --release --workspace

# cargo-nextest comes with the Rust toolchain on machines of this kind;
# installed from crates.io where it is missing.
nextest:
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest

# tests/soak.rs, an ignored test: sealed UDP replication, then Redis, each for
# half of SOAK_MINUTES (read from the environment), under load and faults.
SOAK_MINUTES ?= 10
export SOAK_MINUTES
soak: deps $(PLUGIN)
	$(CARGO) test --release --test soak -- --ignored --nocapture

demo: deps $(PLUGIN)
	$(CARGO) run --release --quiet --example demo

bench: deps $(PLUGIN)
	$(CARGO) bench -p sslcache-core --bench store
	$(CARGO) bench -p sslcache-core --bench replication
	$(CARGO) run --release --quiet --example bench_memory
	$(CARGO) run --release --quiet --example bench_tls
	$(CARGO) run --release --quiet --example bench_tickets
	$(CARGO) run --release --quiet --example bench_cluster_tickets
	$(CARGO) run --release --quiet --example bench_cluster
	$(CARGO) run --release --quiet --example bench_sync
	$(CARGO) run --release --quiet --example bench_repeater
	$(CARGO) run --release --quiet --example bench_redis
	$(CARGO) run --release --quiet --example bench_window

# The fuzz targets depend on the core crate only; built (not run) by `make test`.
# In the main target directory: the dependencies built for the plugin are
# reused (only the core and the targets are compiled again).
fuzz-build:
	CARGO_TARGET_DIR=$(abspath target) $(CARGO) build --release --manifest-path fuzz/Cargo.toml

# 12 million inputs through each replication decoder (plain, sealed). cargo-fuzz on a stable
# toolchain: no sanitizer (the decoder is safe Rust), libFuzzer's coverage.
FUZZ_RUNS ?= 12000000
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz
	mkdir -p fuzz/corpus/wire_decode fuzz/corpus/sealed_open fuzz/corpus/sync_decode
	cd fuzz && $(CARGO) fuzz run --sanitizer none wire_decode corpus/wire_decode seeds/wire_decode -- -runs=$(FUZZ_RUNS) -max_len=600
	cd fuzz && $(CARGO) fuzz run --sanitizer none sealed_open corpus/sealed_open seeds/wire_decode -- -runs=$(FUZZ_RUNS) -max_len=600
	cd fuzz && $(CARGO) fuzz run --sanitizer none sync_decode corpus/sync_decode -- -runs=$(FUZZ_RUNS) -max_len=9000

clean:
	$(CARGO) clean
	rm -f $(PLUGIN) $(DEB_NAME)_*.deb
