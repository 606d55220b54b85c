# -*- coding: utf-8 -*-
"""Soledad's own server (leap.soledad 0.10.7) for tests/tests/soledad_server.rs: its
`SoledadRealm` (which builds `BlobsResource` and `StreamingResource` on the filesystem
backend) behind its `SoledadSession` auth wrapper (with its `URLMapper` and `Token`
credentials), under Twisted. The one thing replaced is the token check: Soledad looks tokens up
in CouchDB; `MemoryTokenChecker` holds them in a dict, and answers exactly as
`CouchDBTokenChecker` does.

Usage: soledad_server.py BLOBS_DIR UUID:TOKEN [UUID:TOKEN...]
Prints `listening on 127.0.0.1:PORT` once it serves.
"""
from __future__ import print_function

import os
import sys

# Soledad reads its config from this file; keep it off the machine's /etc.
os.environ.setdefault('SOLEDAD_SERVER_CONFIG_FILE', '/nonexistent/soledad-server.conf')

from twisted.cred import error  # noqa: E402
from twisted.cred.checkers import ICredentialsChecker  # noqa: E402
from twisted.cred.credentials import IAnonymous, IUsernamePassword  # noqa: E402
from twisted.cred.credentials import Anonymous  # noqa: E402
from twisted.cred.portal import Portal  # noqa: E402
from twisted.internet import defer, reactor  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402
from twisted.web.server import Site  # noqa: E402
from zope.interface import implementer  # noqa: E402

from leap.soledad.server.auth import SoledadRealm  # noqa: E402
from leap.soledad.server.session import SoledadSession  # noqa: E402


@implementer(ICredentialsChecker)
class MemoryTokenChecker(object):
    """CouchDBTokenChecker's answers, from a dict of uuid -> token."""
    credentialInterfaces = [IUsernamePassword, IAnonymous]

    def __init__(self, tokens):
        self.tokens = tokens

    def requestAvatarId(self, credentials):
        if IAnonymous.providedBy(credentials):
            return defer.succeed(Anonymous())
        if self.tokens.get(credentials.username) != credentials.password:
            return defer.fail(error.UnauthorizedLogin())
        return defer.succeed(credentials.username)


def main(blobs_dir, pairs):
    tokens = dict(p.split(':', 1) for p in pairs)
    pool = ThreadPool(name='sync')  # the legacy sync resource's pool; never used here
    conf = {'blobs': True, 'blobs_path': blobs_dir, 'concurrent_blob_writes': 50}
    realm = SoledadRealm(sync_pool=pool, conf=conf)
    portal = Portal(realm, [MemoryTokenChecker(tokens)])
    port = reactor.listenTCP(0, Site(SoledadSession(portal)), interface='127.0.0.1')
    print('listening on 127.0.0.1:%d' % port.getHost().port)
    sys.stdout.flush()
    reactor.run()


if __name__ == '__main__':
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2:])
