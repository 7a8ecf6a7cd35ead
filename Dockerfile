# Kronoscope: the Streamlit app in an image for hosted sharing. Build and run: see DOCKER.md.
#
#   docker build -t kronoscope .                 # CPU PyTorch from the internet
#   docker run -p 8501:8501 kronoscope           # then open http://localhost:8501
#
# Build arguments:
#   BASE_IMAGE       a Python 3.11 image with `python3 -m venv` (default python:3.11-slim)
#   TORCH_VARIANT    PyTorch build served by download.pytorch.org: cpu (default), cu126, cu128, ...
#   TORCH_INDEX_URL  index that serves torch (default https://download.pytorch.org/whl/$TORCH_VARIANT)
#   WHEELS           offline build: folder inside the build context with every wheel that
#                    requirements.txt needs (`pip download -r requirements.txt -d wheels`); when
#                    set, pip installs from it alone (--no-index). .dockerignore lets `wheels/` in.
ARG BASE_IMAGE=python:3.11-slim

# ---- build: the virtual environment, in a stage of its own so that wheels and pip's work files
# never reach a layer of the final image -------------------------------------------------------
FROM ${BASE_IMAGE} AS build
LABEL org.kronoscope.stage="build"
ARG WHEELS=""
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /build
# requirements.txt, plus the wheel folder's content when WHEELS names one (otherwise the same
# file twice, so that this one COPY works either way).
COPY requirements.txt ${WHEELS:-requirements.txt} /build/wheels/
# torch first from TORCH_INDEX_URL (PyPI's Linux torch is a multi-GB CUDA build), at the exact
# version that requirements.txt pins; the rest from the default index, which then finds torch
# already satisfied. Offline: everything from the wheel folder, no index at all.
RUN python3 -m venv /opt/venv \
 && if [ -n "${WHEELS}" ]; then \
      /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/build/wheels \
        -r /build/wheels/requirements.txt; \
    else \
      torch_pin="$(sed -n 's/^\(torch==[^ ;#]*\).*/\1/p' /build/wheels/requirements.txt)" \
      && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "${torch_pin}" \
      && /opt/venv/bin/pip install --no-cache-dir -r /build/wheels/requirements.txt; \
    fi \
 && rm -rf /build/wheels
# Slimming (~350 MB): the packages' own test suites, torch's C++ headers (no compiler here to use
# them) and its C++ test programs. Then check that what the app imports still imports.
RUN site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && find "${site}" -type d -name tests -prune -exec rm -rf {} + \
 && rm -rf "${site}/torch/test" "${site}/torch/include" "${site}"/torch/bin/test_* \
      "${site}"/torch/bin/*Test "${site}"/torch/bin/protoc* \
 && /opt/venv/bin/python -c "import numpy, pandas, plotly, scipy, sklearn, streamlit, torch; \
torch.linalg.eigh(torch.eye(3)); print('torch', torch.__version__, 'cuda', torch.version.cuda)"
# The app's own files (the context holds only what .dockerignore lets in), less the wheels.
COPY . /build/src/
RUN rm -rf /build/src/wheels /build/src/requirements.txt

# ---- runtime ------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG APP_UID=10001
RUN groupadd --gid "${APP_UID}" kronoscope \
 && useradd --uid "${APP_UID}" --gid kronoscope --no-log-init --create-home \
      --home-dir /home/kronoscope --shell /usr/sbin/nologin kronoscope \
 && mkdir -p /var/cache/kronoscope \
 && chown kronoscope:kronoscope /var/cache/kronoscope

# Server settings for a public host (STREAMLIT_* variables override .streamlit/config.toml; see
# DOCKER.md, "Hosting publicly") and the app's server-wide limits; each can be changed at
# `docker run -e NAME=value`. Visitors get the viewer's toolbar (no Deploy button, no developer
# menu) and no tracebacks; cross-origin requests and forged uploads are refused (CORS and XSRF
# protection); the code is never watched or reloaded.
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/home/kronoscope \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_SERVER_ADDRESS=0.0.0.0 \
    STREAMLIT_SERVER_PORT=8501 \
    STREAMLIT_SERVER_MAX_UPLOAD_SIZE=50 \
    STREAMLIT_SERVER_FILE_WATCHER_TYPE=none \
    STREAMLIT_SERVER_RUN_ON_SAVE=false \
    STREAMLIT_SERVER_ENABLE_CORS=true \
    STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION=true \
    STREAMLIT_SERVER_ENABLE_STATIC_SERVING=false \
    STREAMLIT_CLIENT_TOOLBAR_MODE=viewer \
    STREAMLIT_CLIENT_SHOW_ERROR_DETAILS=type \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    KRONOSCOPE_MAX_CONCURRENT_RUNS=4 \
    KRONOSCOPE_MAX_LAYER_PARAMS=4000000 \
    KRONOSCOPE_CACHE_DIR=/var/cache/kronoscope

COPY --from=build /opt/venv /opt/venv
COPY --from=build /build/src /app
WORKDIR /app
# Numeric, so that runtimes that enforce a non-root user (Kubernetes runAsNonRoot) can verify it.
USER ${APP_UID}:${APP_UID}
EXPOSE 8501
# Python's urllib instead of curl, which the slim bases lack; follows STREAMLIT_SERVER_PORT and
# STREAMLIT_SERVER_BASE_URL_PATH when they are changed at run time. serve.py answers 503 until it
# has warmed up the first pages (seconds; the start period leaves room on a slow host).
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; p = os.environ.get('STREAMLIT_SERVER_BASE_URL_PATH', '').strip('/'); u.urlopen('http://127.0.0.1:%s/%s_stcore/health' % (os.environ.get('STREAMLIT_SERVER_PORT', '8501'), p + '/' if p else ''), timeout=4)"]
CMD ["python", "serve.py"]
