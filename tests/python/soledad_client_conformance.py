# -*- coding: utf-8 -*-
"""The genuine Soledad client (leap.soledad 0.10.7, `BlobManager`, Python 2.7) against a
blobsync-server: every call below is Soledad's own code, talking HTTP to the server.

Usage: soledad_client_conformance.py BASE_URL USER TOKEN WORKDIR

Run by tests/tests/soledad_compat.rs with the virtualenv .ci/run builds. The only thing
replaced is Soledad's local SQLCipher store (stubs/pysqlcipher: plain sqlite3). Prints one
line per check and exits 1 on the first failure.
"""
from __future__ import print_function

import os
import sys
import traceback
from io import BytesIO

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'stubs'))

from twisted.internet import defer, task  # noqa: E402

from leap.soledad.client._db.blobs import BlobManager  # noqa: E402
from leap.soledad.client._db.blobs.errors import (  # noqa: E402
    BlobAlreadyExistsError, BlobNotFoundError, InvalidFlagsError)
from leap.soledad.client._db.blobs.sql import SyncStatus  # noqa: E402
from leap.soledad.client._document import BlobDoc  # noqa: E402
from leap.soledad.common.blobs import Flags  # noqa: E402

SECRET = b'k' * 64
NS = 'photos'


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)
    print('ok   %s' % what)


def payload(i):
    # Bytes with spaces and every byte value: Soledad's stream parser splits on b' '.
    return (b'blob %d ' % i) * 50 + bytes(bytearray(range(256))) * (i + 1)


@defer.inlineCallbacks
def expect_error(d, exc, what):
    try:
        yield d
    except exc:
        print('ok   %s' % what)
        return
    except Exception as e:
        raise Failed('%s: got %r instead of %s' % (what, e, exc.__name__))
    raise Failed('%s: no error, wanted %s' % (what, exc.__name__))


@defer.inlineCallbacks
def read_local(bm, blob_id, namespace=''):
    fd = yield bm.local.get(blob_id, namespace=namespace)
    if fd is None:
        defer.returnValue(None)
    fd.seek(0)
    defer.returnValue(fd.read())


@defer.inlineCallbacks
def run(base, user, token, workdir):
    def device(name):
        return BlobManager(
            os.path.join(workdir, name, 'blobs'), base + '/blobs/', b'local key ' + name,
            SECRET, user, token, remote_stream=base + '/stream/')

    a, b = device('a'), device('b')

    # Put in two namespaces: the server's 200 must leave the blob SYNCED.
    yield a.put(BlobDoc(BytesIO(payload(1)), 'b1'), len(payload(1)))
    yield a.put(BlobDoc(BytesIO(payload(2)), 'b2'), len(payload(2)), namespace=NS)
    yield a.put(BlobDoc(BytesIO(payload(3)), 'b3'), len(payload(3)))
    status = yield a.local.get_sync_status('b1')
    check(status[0] == SyncStatus.SYNCED, 'put: b1 is SYNCED after the upload (200)')
    listed = yield a.remote_list()
    check(sorted(listed) == ['b1', 'b3'], 'list default namespace: %r' % listed)
    listed = yield a.remote_list(namespace=NS)
    check(listed == ['b2'], 'list namespace %s: %r' % (NS, listed))

    # 409: the id exists.
    yield expect_error(a._encrypt_and_upload('b1', BytesIO(b'other')), BlobAlreadyExistsError,
                       'put of an existing id: 409')

    # Listing order, flags, 406.
    asc = yield a.remote_list(order_by='date')
    desc = yield a.remote_list(order_by='-date')
    check(asc == ['b1', 'b3'] and desc == ['b3', 'b1'], 'order_by date/-date: %r %r' % (asc, desc))
    yield a.set_flags('b3', [Flags.PROCESSING])
    flags = yield a.get_flags('b3')
    check(flags == [Flags.PROCESSING], 'get_flags (only_flags=True): %r' % flags)
    flagged = yield a.remote_list(filter_flag=Flags.PROCESSING)
    check(flagged == ['b3'], 'filter_flag: %r' % flagged)
    yield expect_error(a.set_flags('b3', ['NOT_A_FLAG']), InvalidFlagsError, 'unknown flag: 406')
    count = yield a.count()
    check(count == {'count': 2}, 'count (only_count=True): %r' % count)

    # Get + decrypt on a second device (needs the Tag header).
    fd = yield b.get('b1')
    fd.seek(0)
    check(fd.read() == payload(1), 'get on device b decrypts b1')
    fd = yield b.get('b2', namespace=NS)
    fd.seek(0)
    check(fd.read() == payload(2), 'get on device b decrypts %s/b2' % NS)

    # Delete, deleted listing, count without tombstones.
    yield a.delete('b3')
    gone = yield a.remote_list(deleted=True)
    check(gone == ['b3'], 'deleted=True lists the tombstone: %r' % gone)
    count = yield a.count()
    check(count == {'count': 1}, 'count does not count tombstones: %r' % count)

    # 404s.
    yield expect_error(a.get_flags('nope'), BlobNotFoundError, 'flags of a missing blob: 404')
    yield expect_error(a.set_flags('nope', [Flags.PENDING]), BlobNotFoundError,
                       'set flags of a missing blob: 404')
    yield expect_error(a._download_and_decrypt('nope'), BlobNotFoundError,
                       'get of a missing blob: 404')
    yield expect_error(a._delete_from_remote('b3'), BlobNotFoundError,
                       'delete of a deleted blob: 404')

    # Stream upload (local-only blobs sent in one request), stream download on device b.
    ids = ['s%d' % i for i in range(4)]
    for i, blob_id in enumerate(ids):
        data = payload(10 + i)
        yield a.put(BlobDoc(BytesIO(data), blob_id), len(data), namespace=NS, local_only=True)
    yield a._upstream(ids, namespace=NS)
    listed = yield a.remote_list(namespace=NS)
    check(sorted(listed) == ['b2'] + ids, 'stream upload stored %r' % listed)
    yield b._downstream(list(ids), namespace=NS)
    for i, blob_id in enumerate(ids):
        got = yield read_local(b, blob_id, NS)
        check(got == payload(10 + i), 'stream download decrypts %s' % blob_id)

    # send_missing: a blob put while "offline" goes up when asked.
    yield a.put(BlobDoc(BytesIO(payload(20)), 'm1'), len(payload(20)), local_only=True)
    yield a.local.update_sync_status('m1', SyncStatus.PENDING_UPLOAD)
    yield a.send_missing()
    listed = yield a.remote_list()
    check('m1' in listed, 'send_missing uploaded m1: %r' % listed)

    # fetch_missing on a third device, then sync() on b (applies a's deletion, fetches m1).
    c = device('c')
    yield c.refresh_sync_status_from_server()
    yield c.fetch_missing()
    got = yield read_local(c, 'm1')
    check(got == payload(20), 'fetch_missing fetched and decrypted m1')
    yield b.put(BlobDoc(BytesIO(payload(30)), 'from-b'), len(payload(30)), local_only=True)
    yield b.local.update_sync_status('from-b', SyncStatus.LOCAL_ONLY)
    yield b.sync()
    listed = yield b.local_list()
    remote = yield b.remote_list()
    check(sorted(listed) == sorted(remote) == ['b1', 'from-b', 'm1'],
          'sync(): local %r == remote %r' % (sorted(listed), sorted(remote)))
    for m in (a, b, c):
        yield m.close()


def main(reactor, base, user, token, workdir):
    d = run(base, user, token, workdir)

    def failed(f):
        if f.check(Failed):
            print('FAIL %s' % f.value, file=sys.stderr)
        else:
            traceback.print_exception(f.type, f.value, f.getTracebackObject())
        raise SystemExit(1)
    d.addErrback(failed)
    return d


if __name__ == '__main__':
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    task.react(main, sys.argv[1:])
