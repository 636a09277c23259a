# syntax=docker/dockerfile:1
# The pneumonia-CAM server in a container: `make serve`'s command, the same configs/serve.yaml.
#   docker build -t pneumonia-cam .                       # CPU (default target): torch CPU wheels
#   docker build --target gpu -t pneumonia-cam:gpu .      # NVIDIA GPU: torch CUDA wheels (run with --gpus all)
#   docker run -p 8080:8080 -v "$PWD/model.ckpt:/models/model.ckpt:ro" pneumonia-cam
#   docker run --gpus all -p 8080:8080 -v "$PWD/model.ckpt:/models/model.ckpt:ro" pneumonia-cam:gpu device=cuda
# Arguments after the image name are Hydra overrides of configs/serve.yaml (precision=bf16, api_key=...).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- dependencies: a virtual environment with the pinned packages (CPU or CUDA torch) ----
FROM ${PYTHON_IMAGE} AS deps-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pneumonia_cam ./pneumonia_cam

FROM deps-base AS deps-cpu
# torch and torchvision from the CPU index (no CUDA libraries), then everything else at its pin
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.14.1" "torchvision==0.29.1" \
    && pip install .

FROM deps-base AS deps-gpu
RUN pip install .

# ---- runtime: the venv, the code, a non-root user; the checkpoint is mounted at /models/model.ckpt ----
FROM ${PYTHON_IMAGE} AS runtime-base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    PROJECT_ROOT=/app \
    TORCH_HOME=/tmp/torch
RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --home-dir /app app \
    && mkdir -p /models /app && chown app:app /app
WORKDIR /app
COPY --chown=app:app pyproject.toml ./
COPY --chown=app:app configs ./configs
COPY --chown=app:app src ./src
COPY --chown=app:app pneumonia_cam ./pneumonia_cam
EXPOSE 8080
# no curl in the image: the standard library asks /health
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status != 200)"]
ENTRYPOINT ["python", "src/serve.py", "ckpt_path=/models/model.ckpt", "host=0.0.0.0", "port=8080", "hydra.run.dir=/tmp/serve", "hydra.output_subdir=null"]
CMD []

FROM runtime-base AS gpu
COPY --from=deps-gpu /opt/venv /opt/venv
USER 10001:10001

FROM runtime-base AS cpu
COPY --from=deps-cpu /opt/venv /opt/venv
USER 10001:10001
