#!/usr/bin/env bash
# Installs (when missing) and starts the scale-out engines for a developer: a throwaway
# PostgreSQL cluster and a one-node Garage, on loopback, in a temp dir. Prints the environment
# a `blobsync-server --backend s3+postgres` needs, and how to stop both (by PID).
#
#   bash tests/scripts/scaleout-up.sh            # install if needed, start, print env
#   bash tests/scripts/scaleout-up.sh --install  # only install (what .ci/run does)
#
# Garage is built once into /opt/garage (about 10 minutes on 2 cores, 1.4 GB of RAM) and
# reused after; PostgreSQL comes from Debian's packages. The tests start their own engines
# (tests/src/engines.rs) and only need the binaries: BLOBSYNC_GARAGE, BLOBSYNC_PG_BIN.
set -euo pipefail

GARAGE_ROOT="${GARAGE_ROOT:-/opt/garage}"
GARAGE="$GARAGE_ROOT/bin/garage"

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "==> apt-get install postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"

# Two runs at once (CI and a developer) build Garage once: the second waits for the first.
mkdir -p "$GARAGE_ROOT"
exec 9>"$GARAGE_ROOT/.install.lock"
flock 9
if [ ! -x "$GARAGE" ]; then
    echo "==> cargo install garage 2.5.0 into $GARAGE_ROOT (about 10 minutes)" >&2
    build="$(mktemp -d /tmp/garage-build.XXXXXX)"
    CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$build" cargo install garage --version 2.5.0 \
        --locked --no-default-features --features bundled-libs,sqlite --root "$GARAGE_ROOT"
    rm -rf "$build"
fi
flock -u 9

if [ "${1:-}" = "--install" ]; then
    echo "BLOBSYNC_GARAGE=$GARAGE"
    echo "BLOBSYNC_PG_BIN=$PG_BIN"
    exit 0
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

T="$(mktemp -d /tmp/blobsync-scaleout.XXXXXX)"
chmod 711 "$T"
mkdir -p "$T/pg"
PG_PORT="$(free_port)"
as_pg() { if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$T/pg"; runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$PG_BIN/initdb" -D "$T/pg/data" -A trust -U postgres >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$T/pg/data" -w -l "$T/pg/log" \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $T/pg" start >/dev/null
as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres blobsync
PG_PID="$(head -1 "$T/pg/data/postmaster.pid")"

RPC="$(free_port)"; S3="$(free_port)"; ADMIN="$(free_port)"
cat > "$T/garage.toml" <<TOML
metadata_dir = "$T/garage/meta"
data_dir = "$T/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC"
rpc_public_addr = "127.0.0.1:$RPC"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$ADMIN"
TOML
g() { "$GARAGE" -c "$T/garage.toml" "$@"; }
RUST_LOG=garage=warn "$GARAGE" -c "$T/garage.toml" server >"$T/garage.log" 2>&1 &
GARAGE_PID=$!
for _ in $(seq 100); do NODE="$(g node id -q 2>/dev/null | cut -d@ -f1)" && [ -n "$NODE" ] && break; sleep 0.1; done
g layout assign -z dc1 -c 1G "$NODE" >/dev/null
g layout apply --version 1 >/dev/null
for _ in $(seq 100); do g bucket create blobsync >/dev/null 2>&1 && break; sleep 0.2; done
KEY="$(g key create blobsync)"
g bucket allow --read --write --owner blobsync --key blobsync >/dev/null
KEY_ID="$(echo "$KEY" | sed -n 's/^Key ID: *//p')"
SECRET="$(echo "$KEY" | sed -n 's/^Secret key: *//p')"

cat <<ENV
# PostgreSQL (pid $PG_PID) and Garage (pid $GARAGE_PID) are up in $T.
export BLOBSYNC_SERVER_BACKEND=s3+postgres
export BLOBSYNC_S3_BUCKET=blobsync
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3
export AWS_REGION=garage
export AWS_ACCESS_KEY_ID=$KEY_ID
export AWS_SECRET_ACCESS_KEY=$SECRET
export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/blobsync
# Stop both: kill -QUIT $PG_PID; kill $GARAGE_PID; rm -rf $T
ENV
