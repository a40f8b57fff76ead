#!/bin/bash
# Runs once, as the postgres user, when the primary's data directory is created
# (/docker-entrypoint-initdb.d of the postgres image): the replication role and its pg_hba
# line, the application's role and database, and a small table to read.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v repl_password="$REPLICATION_PASSWORD" -v app_password="$APP_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'repl_password';
CREATE ROLE app LOGIN PASSWORD :'app_password';
CREATE DATABASE app OWNER app;
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname app <<'SQL'
SET ROLE app;
CREATE TABLE visits (id bigserial PRIMARY KEY, city text NOT NULL, at timestamptz NOT NULL DEFAULT now());
INSERT INTO visits (city) VALUES ('Ashburn'), ('Dublin'), ('Singapore');
SQL

# Streaming replication for the replicas' pg_basebackup and walreceiver. pg_hba.conf is read
# when the server restarts at the end of initialization.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
