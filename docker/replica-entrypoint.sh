#!/bin/bash
# Entry point of a replica container (runs as root, like the postgres image's own).
# On the first start it clones the primary with pg_basebackup -R (which writes
# primary_conninfo and standby.signal) and adds this replica's settings; then it hands over
# to the image's entry point, which finds an existing data directory and just starts postgres.
#
# Environment: PRIMARY_HOST, REPLICATION_PASSWORD, CLUSTER_NAME, APPLY_DELAY (e.g. 300ms).
set -euo pipefail

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -q -h "$PRIMARY_HOST" -p 5432; do
        echo "replica $CLUSTER_NAME: waiting for $PRIMARY_HOST:5432"
        sleep 1
    done
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    gosu postgres env PGPASSWORD="$REPLICATION_PASSWORD" \
        pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" \
        -R -X stream -c fast
    # Later lines win: these override what was copied from the primary.
    cat >> "$PGDATA/postgresql.conf" <<CONF

# added by replica-entrypoint.sh
cluster_name = '$CLUSTER_NAME'
hot_standby = on
hot_standby_feedback = on
recovery_min_apply_delay = '$APPLY_DELAY'
CONF
    chown postgres:postgres "$PGDATA/postgresql.conf"
fi

exec docker-entrypoint.sh postgres
