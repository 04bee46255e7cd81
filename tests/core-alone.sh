#!/bin/sh
# The core crate on a machine without uWSGI and libclang (`make core-alone`,
# root): a private mount namespace hides every libclang and every uWSGI
# binary, then the core's tests run and the fuzz targets build, each in a
# fresh target directory. Nothing outside the namespace changes.
set -e
if [ "$1" != "--inside" ]; then
	exec unshare -m "$0" --inside
fi
cd "$(dirname "$0")/.."
for f in $(find / -xdev \( -name 'libclang*.so*' -o -name 'uwsgi' -o -name 'uwsgi-core' \) \( -type f -o -type l \) 2>/dev/null | grep -v '^/proc'); do
	real=$(readlink -f "$f")
	[ -f "$real" ] && mount --bind /dev/null "$real"
done
echo "hidden: $(find / -xdev -name 'libclang*.so*' -size +0 -type f 2>/dev/null | wc -l) libclang files left, uwsgi on PATH: $(command -v uwsgi && uwsgi --version 2>/dev/null || echo none)"
export UWSGI=/nonexistent/uwsgi
dir=$(mktemp -d)
CARGO_TARGET_DIR="$dir/core" cargo test -p sslcache-core
CARGO_TARGET_DIR="$dir/fuzz" cargo build --manifest-path fuzz/Cargo.toml
echo "core-alone: the core's tests pass and the fuzz targets build without uWSGI and libclang"
rm -rf "$dir"
