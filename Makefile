# Two commands do all the set-up on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TINY_MODEL := models/tiny-qwen2.5-vl
export DJANGO_SETTINGS_MODULE := vlmsite.settings

.PHONY: demo run test bench lint format migrate tiny-model venv clean prometheus-tools browser test-postgres fuzz loadtest

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# A generated SECRET_KEY for this checkout (settings.py reads .env; the server refuses to start without one).
.env:
	echo "SECRET_KEY=$$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 50)" > $@

# Front-end libraries for the admin dashboard (package.json pins them; collectstatic serves them from
# node_modules, which is never committed).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

migrate: venv .env node_modules/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0

tiny-model: venv .env
	$(BIN)/python manage.py build_tiny_model $(TINY_MODEL)

# Serve the tiny model with gunicorn on :8000 (HOST/PORT override). The demo lets media URLs reach
# private addresses (an image server on localhost, say) so the spec's examples work locally, and sends
# its admin cookies without the Secure flag, for sign-in over plain http from other machines; `make run`
# keeps the safe defaults.
demo: migrate tiny-model
	VLM_MODEL=$(abspath $(TINY_MODEL)) VLM_ALLOW_PRIVATE_MEDIA_URLS=$${VLM_ALLOW_PRIVATE_MEDIA_URLS:-true} \
		SESSION_COOKIE_SECURE=$${SESSION_COOKIE_SECURE:-false} CSRF_COOKIE_SECURE=$${CSRF_COOKIE_SECURE:-false} \
		$(BIN)/gunicorn -c gunicorn.conf.py vlmsite.wsgi

# Serve VLM_MODEL (default Qwen/Qwen2.5-VL-7B-Instruct) with gunicorn.
run: migrate
	$(BIN)/gunicorn -c gunicorn.conf.py vlmsite.wsgi

# The serving benchmark: batching on and off under 16 concurrent clients; writes bench/RESULTS.md.
bench: venv .env tiny-model
	$(BIN)/python bench/serve_bench.py

# The schemathesis fuzz of `make test` (tests/test_fuzz.py), with 1000 examples per operation and mode
# instead of 50 (VLM_FUZZ_EXAMPLES sets another number), and no per-test time limit.
fuzz: venv .env tiny-model
	VLM_FUZZ_EXAMPLES=$${VLM_FUZZ_EXAMPLES:-1000} $(BIN)/pytest --timeout 0 tests/test_fuzz.py

# 16 clients for 60 s of mixed traffic (answers, refusals, hostile input) against gunicorn: fails on any
# unexpected 5xx or a request-log row count that differs from the requests sent (bench/loadtest.py).
loadtest: venv .env tiny-model
	$(BIN)/python bench/loadtest.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# promtool and prometheus (Debian's package) for tests/test_metrics.py and tests/test_prometheus.py;
# skipped when both are on PATH. The tests run their own server on a free port; the package's service
# is stopped in case the install started it on :9090.
prometheus-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
		&& { systemctl disable --now prometheus >/dev/null 2>&1 || service prometheus stop >/dev/null 2>&1 || true; }; }

# Debian's Chromium and ChromeDriver for tests/test_browser.py; skipped when both are installed.
browser:
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# The tests marked `postgres` (the request log, admin and dashboard) again on the PostgreSQL server on
# 127.0.0.1:5432, whenever it answers; in CI (.ci/run starts it) it must answer.
test-postgres: venv .env
	@if pg_isready -q -h 127.0.0.1 -p 5432; then \
		DATABASE_URL=postgres://postgres@127.0.0.1:5432/vlm $(BIN)/pytest -m postgres; \
	elif [ -n "$$CI" ]; then echo "PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; \
	else echo "PostgreSQL does not answer on 127.0.0.1:5432: the postgres-marked tests ran on SQLite only."; fi

test: venv .env lint prometheus-tools browser node_modules/.installed
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/pytest
	$(MAKE) --no-print-directory test-postgres

clean:
	rm -rf $(VENV) models db.sqlite3* staticfiles .pytest_cache .ruff_cache node_modules
