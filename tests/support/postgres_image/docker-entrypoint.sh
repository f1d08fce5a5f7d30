#!/bin/sh
# The official postgres image's start-up contract, in short: as root, fix PGDATA's owner and re-exec as
# `postgres`; on an empty PGDATA run initdb (superuser POSTGRES_USER with POSTGRES_PASSWORD, password auth for
# TCP clients), create POSTGRES_DB, then exec the server. Not supported: /docker-entrypoint-initdb.d scripts.
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

# `docker run image -c fsync=off` means `postgres -c fsync=off`, as with the official image.
case "${1:-postgres}" in -*) set -- postgres "$@" ;; esac
[ "$#" -gt 0 ] || set -- postgres

if [ "$1" != postgres ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown -R postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        echo "error: database is uninitialized and POSTGRES_PASSWORD is not set" \
             "(or set POSTGRES_HOST_AUTH_METHOD=trust, as with the official image)" >&2
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is word-split on purpose, as in the official image
    initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host="$auth" \
        ${POSTGRES_INITDB_ARGS:-} > /dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    printf 'host all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        # A socket-only server for the set-up, so nothing connects over TCP before the database exists.
        pg_ctl --silent --wait --options="-c listen_addresses=''" start
        psql --quiet --no-psqlrc --username="$user" --dbname=postgres --set ON_ERROR_STOP=1 --set db="$db" <<'SQL'
CREATE DATABASE :"db";
SQL
        pg_ctl --silent --wait --mode=fast stop
    fi
    echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
