# Build recipe for `uwsgi --build-plugin <this checkout>`.
#
# uWSGI runs this file inside its own uwsgiconfig.py. We build the Rust
# crate as a static library (against the uWSGI binary that asked, checked
# below) and hand the archive to uWSGI's linker line, wrapped in
# --whole-archive so that every object of the plugin is kept.

import os
import shutil
import subprocess
import sys

NAME = 'sslcache'


def _checkout():
    # uwsgiconfig.py's build_plugin() has the plugin directory in `path`.
    try:
        return os.path.abspath(sys._getframe(1).f_locals['path'])
    except (KeyError, ValueError):
        for flag in ('--extra-plugin', '-x'):
            if flag in sys.argv:
                return os.path.abspath(sys.argv[sys.argv.index(flag) + 1])
    print('sslcache: cannot tell where the sslcache checkout is')
    sys.exit(1)


def _uwsgi_binary():
    """The binary to build for: UWSGI=... or `uwsgi` on PATH, and it must be
    the one running --build-plugin (same --cflags)."""
    binary = os.environ.get('UWSGI') or shutil.which('uwsgi')
    if not binary:
        print('sslcache: set UWSGI=/path/to/the/uwsgi/binary running --build-plugin')
        sys.exit(1)
    wanted = os.environ.get('UWSGI_PLUGINS_BUILDER_CFLAGS', '').split()
    cflags = subprocess.run([binary, '--cflags'], capture_output=True, text=True).stdout.split()
    if wanted and cflags != wanted:
        print('sslcache: %s is not the uWSGI binary running --build-plugin: set UWSGI=/path/to/that binary' % binary)
        sys.exit(1)
    return os.path.abspath(binary)


_dir = _checkout()
# Its own target directory unless told one (CARGO_TARGET_DIR): a build for
# this uWSGI binary must not replace `make`'s.
_target = os.environ.get('CARGO_TARGET_DIR') or os.path.join(_dir, 'target', 'uwsgi-build-plugin')
_env = dict(os.environ, UWSGI=_uwsgi_binary(), CARGO_TARGET_DIR=_target)
if subprocess.call(['cargo', 'rustc', '--release', '--lib', '--crate-type', 'staticlib'], cwd=_dir, env=_env) != 0:
    print('sslcache: cargo build failed')
    sys.exit(1)

CFLAGS = ['-Wl,--whole-archive']
GCC_LIST = [os.path.join(_target, 'release', 'libsslcache.a')]
LDFLAGS = ['-Wl,--no-whole-archive']
LIBS = ['-lssl', '-lcrypto', '-lgcc_s', '-lutil', '-lrt', '-lpthread', '-lm', '-ldl', '-lc']
