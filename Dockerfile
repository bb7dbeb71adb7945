# One image for the api, the worker and the migrate step; the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first, read from pyproject.toml so the versions live in one place: the
# large torch layer is then rebuilt only when the dependency list changes, not on every edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['worker']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Editable, so api/core/migrations.py finds alembic.ini and alembic/ next to the packages in /app.
COPY . .
RUN pip install --no-deps -e ".[worker]"

# The folders exist in the image, owned by the service user, so named volumes mounted
# over them start out writable by it.
RUN useradd --system --uid 1000 --home-dir /var/lib/tunelab tunelab \
    && mkdir -p /var/lib/tunelab/data /var/lib/tunelab/artifacts \
    && chown -R tunelab:tunelab /var/lib/tunelab
USER tunelab

EXPOSE 8000
CMD ["tunelab", "api", "--host", "0.0.0.0", "--port", "8000"]
