#!/usr/bin/env bash
# The whole test suite, as CI runs it: makes sure PostgreSQL (server, psql, pgbench), promtool,
# HAProxy and the Kubernetes schema validators are there, installing them when missing, then
# checks formatting and lints and runs every test against real servers. A test that needs
# PostgreSQL, promtool or HAProxy fails if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

have_pg() {
  if [ -n "${PGMERIDIAN_PG_BIN:-}" ]; then
    [ -x "$PGMERIDIAN_PG_BIN/initdb" ] && [ -x "$PGMERIDIAN_PG_BIN/pgbench" ] && [ -x "$PGMERIDIAN_PG_BIN/psql" ]
  else
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/pgbench" >/dev/null
  fi
}

if ! have_pg; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tests/run.sh: PostgreSQL server binaries not found; installing the postgresql package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
  else
    echo "tests/run.sh: PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin." >&2
    echo "Install them (Debian/Ubuntu: sudo apt-get install postgresql) or set PGMERIDIAN_PG_BIN." >&2
    exit 1
  fi
fi

# tests/admin.rs lints the /metrics exposition with `promtool check metrics`.
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tests/run.sh: promtool not found; installing the prometheus package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "tests/run.sh: promtool not found (Debian/Ubuntu: sudo apt-get install prometheus)." >&2
    exit 1
  fi
fi

# tests/fleet.rs puts HAProxy (TCP mode, send-proxy-v2, /readyz checks) in front of two proxies.
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tests/run.sh: haproxy not found; installing the haproxy package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null
  else
    echo "tests/run.sh: haproxy not found (Debian/Ubuntu: sudo apt-get install haproxy)." >&2
    exit 1
  fi
fi

# tests/deploy.rs validates deploy/kubernetes against the Kubernetes API and prometheus-operator
# CRD schemas with Python packages (pinned in deploy/kubernetes/check/requirements.txt), and
# renders it with `kubectl kustomize` (kubectl comes with the machine; no registry here has it).
if ! python3 -c 'import kubernetes_validate, cloudcoil.models.prometheus_operator' 2>/dev/null; then
  echo "tests/run.sh: installing the Kubernetes schema validators (pip)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -r deploy/kubernetes/check/requirements.txt
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
