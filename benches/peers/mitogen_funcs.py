"""Functions executed inside Mitogen child contexts by mitogen_local.py and push.py.

They live in their own importable module (not in the benchmark's __main__) so
the child fetches them through Mitogen's normal module importer, the way a
real Mitogen user ships code, and so the child never re-imports the benchmark
script itself.
"""
import os

import mitogen.core
import mitogen.service


def ping():
    """Trivial call: returns a small value."""
    return 42


def length(data):
    """Bulk-by-call: returns the size of the bytes argument it was sent."""
    return len(data)


class _CountingSink(object):
    """File-like object that only counts what FileService.get() writes."""

    def __init__(self):
        self.n = 0

    def write(self, chunk):
        self.n += len(chunk)


@mitogen.core.takes_router
def fetch_from_parent(path, router=None):
    """Bulk-by-stream: pull `path` from the parent's FileService.

    Returns the number of bytes received (data is discarded, not written to
    disk), so only the transport is measured.
    """
    parent = mitogen.core.Context(router, mitogen.parent_id)
    sink = _CountingSink()
    ok, meta = mitogen.service.FileService.get(parent, path, sink)
    if not ok or sink.n != meta['size']:
        raise RuntimeError('short transfer: %d of %d' % (sink.n, meta['size']))
    return sink.n


@mitogen.core.takes_router
def fetch_to_file(path, dest, router=None):
    """A file push: pull `path` from the parent's FileService into the file `dest` (created or
    emptied; a new one is mode 0600). Returns the number of bytes written."""
    parent = mitogen.core.Context(router, mitogen.parent_id)
    with os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'wb') as f:
        ok, meta = mitogen.service.FileService.get(parent, path, f)
        n = f.tell()
    if not ok or n != meta['size']:
        raise RuntimeError('short transfer: %d of %d' % (n, meta['size']))
    return n
