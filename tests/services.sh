# Services the test suite uses beyond Python: headless Chromium (report rendering) and PostgreSQL
# (a distributed sweep). Source it, do not run it, so DROPLAB_TEST_POSTGRES reaches pytest:
#
#     . tests/services.sh && python -m pytest
#
# As root on Debian/Ubuntu it installs what is missing with apt-get and starts PostgreSQL on loopback.
# Anywhere else it says what is missing; the tests that need it then skip with that reason (and fail
# under CI=true). It never stops the command it is part of: it always returns 0.

_droplab_services() {
    local missing=() need_install=0
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || missing+=(chromium chromium-driver)
    command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "tests/services.sh: installing ${missing[*]} with apt-get (a minute or two, once)" >&2
            if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
                   && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                      "${missing[@]}" >/dev/null; }; then
                echo "tests/services.sh: apt-get could not install ${missing[*]}; the tests needing them skip" >&2
            fi
        else
            need_install=1
        fi
    fi
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        echo "tests/services.sh: no headless Chromium: the browser test skips" \
             "(install Debian's chromium and chromium-driver; this needs root)" >&2
    fi
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        _droplab_postgres
    else
        echo "tests/services.sh: no PostgreSQL: the server-database sweep test skips" \
             "(install Debian's postgresql as root, or export DROPLAB_TEST_POSTGRES=<SQLAlchemy URL>)" >&2
    fi
    if [ "$need_install" = 1 ]; then
        echo "tests/services.sh: not root, so nothing was installed" >&2
    fi
    return 0
}

_droplab_postgres() {
    # an already exported URL (a server elsewhere) wins
    if [ -n "${DROPLAB_TEST_POSTGRES:-}" ]; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "tests/services.sh: PostgreSQL is installed but starting it needs root;" \
             "export DROPLAB_TEST_POSTGRES=<SQLAlchemy URL> to use a running server" >&2
        return 0
    fi
    local version
    version="$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1 || true)"
    if [ -z "$version" ]; then
        echo "tests/services.sh: PostgreSQL has no cluster (/etc/postgresql is empty): the sweep test skips" >&2
        return 0
    fi
    sed -i "s/^#\?listen_addresses.*/listen_addresses = 'localhost'/" "/etc/postgresql/$version/main/postgresql.conf" || true
    pg_ctlcluster "$version" main start >/dev/null 2>&1 || true  # already running is fine
    # from / : the postgres user may not be allowed into this checkout's directory
    if (cd / && su postgres -c "psql -qtc \"SELECT 1 FROM pg_roles WHERE rolname='droplab'\" | grep -q 1 \
            || psql -qc \"CREATE ROLE droplab LOGIN SUPERUSER PASSWORD 'droplab'\"") >/dev/null 2>&1; then
        export DROPLAB_TEST_POSTGRES="postgresql+psycopg://droplab:droplab@127.0.0.1:5432/postgres"
    else
        echo "tests/services.sh: PostgreSQL $version did not start: the sweep test skips" >&2
    fi
    return 0
}

_droplab_services
unset -f _droplab_services _droplab_postgres
