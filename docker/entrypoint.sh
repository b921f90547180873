#!/bin/sh
# The image's roles (compose.yaml names one per service). Compose starts services in order but does not wait for
# one to be ready, so each role waits for what it needs: web migrates the database once PostgreSQL answers; the
# others wait until the schema is current; the proxy (Caddy: the site in front of web, and the Fleet API) waits for
# the SuperLink's certificate.
set -eu
cd /app

wait_schema() {
    until python manage.py migrate --check >/dev/null 2>&1; do sleep 2; done
}

case "${1:-web}" in
web)
    until python manage.py migrate --noinput; do echo "waiting for the database…"; sleep 2; done
    python manage.py collectstatic --noinput --verbosity 0
    # WEB_WORKERS processes (a PostgreSQL pool each with DB_POOL_SIZE). The client address comes from the proxy's
    # X-Forwarded-For only when the peer is in FORWARDED_ALLOW_IPS: compose.yaml sets "*" because web is reachable
    # only from `proxy`; published on its own, the default trusts no one but loopback.
    exec python -m uvicorn bayanihan_site.asgi:application --host 0.0.0.0 --port 8000 \
        --workers "${WEB_WORKERS:-4}" --no-access-log --no-server-header \
        --proxy-headers --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-127.0.0.1}"
    ;;
worker)
    wait_schema
    exec python -m celery -A bayanihan_site worker --pool=solo --loglevel=INFO \
        --without-gossip --without-mingle --without-heartbeat
    ;;
superlink)
    wait_schema
    exec python docker/superlink.py
    ;;
proxy)
    until [ -s var/superlink-tls/superlink.key ] && [ -s var/superlink-tls/ca.crt ]; do sleep 1; done
    exec caddy run --config /app/docker/Caddyfile --adapter caddyfile
    ;;
*)
    exec "$@"
    ;;
esac
