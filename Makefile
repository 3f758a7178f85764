# Two commands do all the set-up on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TINY_MODEL := models/tiny-qwen2.5-vl
export DJANGO_SETTINGS_MODULE := vlmsite.settings

.PHONY: demo run test lint format migrate tiny-model venv clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# A generated SECRET_KEY for this checkout (settings.py reads .env; the server refuses to start without one).
.env:
	echo "SECRET_KEY=$$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 50)" > $@

migrate: venv .env
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0

tiny-model: venv .env
	$(BIN)/python manage.py build_tiny_model $(TINY_MODEL)

# Serve the tiny model with gunicorn on :8000 (HOST/PORT override).
demo: migrate tiny-model
	VLM_MODEL=$(abspath $(TINY_MODEL)) $(BIN)/gunicorn -c gunicorn.conf.py vlmsite.wsgi

# Serve VLM_MODEL (default Qwen/Qwen2.5-VL-7B-Instruct) with gunicorn.
run: migrate
	$(BIN)/gunicorn -c gunicorn.conf.py vlmsite.wsgi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: venv .env lint
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/pytest

clean:
	rm -rf $(VENV) models db.sqlite3* staticfiles .pytest_cache .ruff_cache
