#!/usr/bin/env bash
# Start the local PostgreSQL server on 127.0.0.1:5432 if it is down (Debian's cluster tools).
set -euo pipefail
pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && exit 0
if ! command -v pg_ctlcluster >/dev/null || [ "$(id -u)" != 0 ]; then
    echo "make test needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth); start it with:" >&2
    echo "  sudo pg_ctlcluster \$(ls /etc/postgresql | head -n1) main start" >&2
    exit 1
fi
pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done
echo "PostgreSQL did not start within 30 s" >&2
exit 1
