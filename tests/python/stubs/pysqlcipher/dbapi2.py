"""pysqlcipher.dbapi2 on plain sqlite3: SQLCipher's PRAGMAs (key, cipher...) are unknown to
SQLite and ignored by it; the one missing API, incremental BLOB writes
(`Connection.blob(table, column, rowid, flags)`), is emulated by one UPDATE on close."""
from sqlite3 import *  # noqa: F401,F403
import sqlite3 as _sqlite3


class _Blob(object):
    def __init__(self, conn, table, column, rowid):
        self._conn, self._table, self._column, self._rowid = conn, table, column, rowid
        self._parts = []

    def write(self, data):
        self._parts.append(bytes(data))

    def close(self):
        if self._parts is not None:
            sql = 'UPDATE %s SET %s = ? WHERE rowid = ?' % (self._table, self._column)
            self._conn.execute(sql, (buffer(b''.join(self._parts)), self._rowid))
            self._parts = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Connection(_sqlite3.Connection):
    def blob(self, table, column, rowid, flags):
        return _Blob(self, table, column, rowid)


def connect(*args, **kwargs):
    kwargs.setdefault('factory', Connection)
    return _sqlite3.connect(*args, **kwargs)
