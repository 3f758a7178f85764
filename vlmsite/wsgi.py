"""WSGI entry point for gunicorn (`vlmsite.wsgi:application`)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vlmsite.settings")
# Tells InferenceConfig.ready() that this process serves HTTP and should load the model.
os.environ.setdefault("VLM_SERVING", "1")

application = get_wsgi_application()
