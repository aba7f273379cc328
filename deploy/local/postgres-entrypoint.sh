#!/bin/sh
# PostgreSQL for deploy/compose.local.yaml, with the official postgres image's contract: on an
# empty data folder, initdb with POSTGRES_USER as the superuser and the password of
# POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD), password (SCRAM) logins from the network, and
# POSTGRES_DB created; then the server in the foreground, listening on every address.
set -eu
BIN=/usr/lib/postgresql/15/bin
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
user="${POSTGRES_USER:-postgres}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    password="$(cat "$POSTGRES_PASSWORD_FILE")"
  else
    password="${POSTGRES_PASSWORD:-}"
  fi
  if [ -z "$password" ]; then
    echo "postgres: no password: set POSTGRES_PASSWORD_FILE (a secret readable by uid 999)" >&2
    exit 1
  fi
  pwfile="$(mktemp)"
  printf '%s\n' "$password" >"$pwfile"
  "$BIN/initdb" -D "$PGDATA" -U "$user" --pwfile="$pwfile" --auth-local=peer \
    --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  # local connections as the superuser (pg_isready, the database's creation) by its own name
  sed -i "s/^local \+all \+all \+peer$/local all all trust/" "$PGDATA/pg_hba.conf"
  db="${POSTGRES_DB:-$user}"
  if [ "$db" != postgres ]; then
    "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    "$BIN/createdb" -U "$user" -h /run/postgresql "$db"
    "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "postgres: initialised $PGDATA (superuser $user, database $db)"
fi
exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql
