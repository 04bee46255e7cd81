/* Bindings entry point for sslcache: the uwsgi.h that the target binary
 * prints with --dot-h (copied to OUT_DIR by build.rs), plus what uwsgi.h
 * leaves out. */
#include "uwsgi.h"

/* The global server state; uwsgi.h never declares it, every C plugin
 * declares it itself. */
extern struct uwsgi_server uwsgi;
