# sslcache: build, install, test, demo.
#
#   make                      build sslcache_plugin.so for `uwsgi` on PATH
#   make UWSGI=/path/uwsgi    ... for that binary
#   make install              copy it into that binary's plugin directory
#   make test                 the whole test suite (installs what it needs)
#   make demo                 a local cluster showing resumed sessions
#   make bench                benchmarks (figures in the README)
#   make unit-test            the core crate's tests alone (no uWSGI, no libclang)
#   make core-alone           ... with uWSGI and libclang hidden (root; a mount namespace)
#   make fuzz                 fuzz the datagram decoder (needs cargo-fuzz)

UWSGI ?= $(shell command -v uwsgi 2>/dev/null)
CARGO ?= cargo
PLUGIN := sslcache_plugin.so

# Debian packages: the uWSGI binary and what bindgen needs to read its
# headers, the TLS and balancer tools the tests drive, the Python plugin used
# to reach the stats entry through uWSGI's cache API.
DEB_PACKAGES := uwsgi-core uwsgi-plugin-python3 libclang-dev libssl-dev libpcre3-dev \
	zlib1g-dev libcap-dev uuid-dev pkg-config openssl haproxy iproute2 iptables binutils gnutls-bin

# uWSGI 2.0.31 built from PyPI's sdist, for the second binary under test.
PYPI_UWSGI_VERSION := 2.0.31
PYPI_DIR := target/pypi-uwsgi
PYPI_UWSGI := $(PYPI_DIR)/uwsgi-$(PYPI_UWSGI_VERSION)/uwsgi
PYPI_PLUGIN_DIR := $(PYPI_DIR)/plugin
# The same uWSGI built without SSL: sslcache must refuse to build for it.
PYPI_NOSSL_UWSGI := $(PYPI_DIR)/nossl/uwsgi-$(PYPI_UWSGI_VERSION)/uwsgi

.PHONY: all $(PLUGIN) install deps test unit-test core-alone demo bench fuzz fuzz-build pypi-uwsgi clean

all: $(PLUGIN)

$(PLUGIN):
	@test -n "$(UWSGI)" || { echo "no uwsgi binary: install uwsgi-core or pass UWSGI=/path/to/uwsgi" >&2; exit 1; }
	UWSGI=$(UWSGI) $(CARGO) build --release --lib
	cp target/release/libsslcache.so $(PLUGIN)

install: $(PLUGIN)
	@dir=$$($(UWSGI) --cflags | tr ' ' '\n' | sed -n 's/^-DUWSGI_PLUGIN_DIR="\\"\(.*\)\\""$$/\1/p'); \
	test -n "$$dir" || { echo "cannot find the plugin directory of $(UWSGI)" >&2; exit 1; }; \
	install -d "$$dir" && install -m 0644 $(PLUGIN) "$$dir/$(PLUGIN)" && echo "installed $$dir/$(PLUGIN)"

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

# The plugin built against the PyPI binary, in its own target directory.
pypi-uwsgi: $(PYPI_UWSGI) $(PYPI_NOSSL_UWSGI)
	UWSGI=$(abspath $(PYPI_UWSGI)) CARGO_TARGET_DIR=target/pypi-build $(CARGO) build --release --lib
	mkdir -p $(PYPI_PLUGIN_DIR)
	cp target/pypi-build/release/libsslcache.so $(PYPI_PLUGIN_DIR)/$(PLUGIN)

# The core crate alone: no uWSGI, no libclang needed.
unit-test:
	$(CARGO) test --release -p sslcache-core

core-alone:
	tests/core-alone.sh

test: deps $(PLUGIN) pypi-uwsgi fuzz-build
	SSLCACHE_REQUIRE_ALL=1 \
	SSLCACHE_PYPI_UWSGI=$(abspath $(PYPI_UWSGI)) \
	SSLCACHE_PYPI_PLUGIN_DIR=$(abspath $(PYPI_PLUGIN_DIR)) \
	SSLCACHE_NOSSL_UWSGI=$(abspath $(PYPI_NOSSL_UWSGI)) \
	$(CARGO) test --release --workspace -- --test-threads=2

demo: deps $(PLUGIN)
	$(CARGO) run --release --quiet --example demo

bench: deps $(PLUGIN)
	$(CARGO) bench -p sslcache-core --bench store
	$(CARGO) bench -p sslcache-core --bench replication
	$(CARGO) run --release --quiet --example bench_memory
	$(CARGO) run --release --quiet --example bench_tls
	$(CARGO) run --release --quiet --example bench_tickets
	$(CARGO) run --release --quiet --example bench_cluster
	$(CARGO) run --release --quiet --example bench_sync

# The fuzz targets depend on the core crate only; built (not run) by `make test`.
fuzz-build:
	$(CARGO) build --release --manifest-path fuzz/Cargo.toml

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
	rm -f $(PLUGIN)
