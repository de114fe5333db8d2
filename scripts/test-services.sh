# Sourced by `make test` (and so by CI): the services the tests use beyond Python.
#   - Debian's chromium, for the feedback app's browser tests;
#   - a PostgreSQL server, for the feedback database tests on PostgreSQL (they run on SQLite regardless);
#   - Debian's espeak-ng, flite and sox, for the asr data build's test (text to speech, then 16 kHz audio).
# As root the script installs and starts what is missing; otherwise it says which tests will skip and why.
# It exports RLHFKIT_TEST_PG_URL when a server answers (a value already set is kept).
have_pg() { compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; }
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
have_pg || missing+=(postgresql)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v flite >/dev/null 2>&1 || missing+=(flite)
command -v sox >/dev/null 2>&1 || missing+=(sox)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test services: installing ${missing[*]} (Debian packages)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -z "${RLHFKIT_TEST_PG_URL:-}" ] && [ "$(id -u)" = 0 ] && have_pg; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  [ -d "/etc/postgresql/$ver/main" ] || pg_createcluster "$ver" main >/dev/null
  pg_ctlcluster "$ver" main start 2>/dev/null || true
  su postgres -c "psql -qc \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='rlhfkit') THEN CREATE ROLE rlhfkit LOGIN PASSWORD 'rlhfkit' CREATEDB; END IF; END \\\$\\\$;\"" >/dev/null 2>&1 || true
  su postgres -c "createdb -O rlhfkit rlhfkit_test" 2>/dev/null || true
  if pg_isready -q -h 127.0.0.1 -p 5432; then
    export RLHFKIT_TEST_PG_URL="postgresql+psycopg://rlhfkit:rlhfkit@127.0.0.1:5432/rlhfkit_test"
  fi
fi
command -v chromium >/dev/null 2>&1 \
  || echo "test services: no chromium: the browser tests (-m browser) will skip; install Debian's chromium to run them" >&2
command -v espeak-ng >/dev/null 2>&1 && command -v flite >/dev/null 2>&1 && command -v sox >/dev/null 2>&1 \
  || echo "test services: no espeak-ng, flite or sox: the asr data build's test will skip; install Debian's espeak-ng, flite and sox" >&2
[ -n "${RLHFKIT_TEST_PG_URL:-}" ] \
  || echo "test services: no PostgreSQL: the PostgreSQL tests (-m postgres) will skip; run as root, or set RLHFKIT_TEST_PG_URL to a server's URL" >&2
