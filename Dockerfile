# Multi-stage build of the CAD service (BuildKit: DOCKER_BUILDKIT=1 with Debian's docker client).
#
#   docker build --target server      -t cad-server .        # serving: ONNX Runtime (CPU), no torch, non-root
#   docker build --target server-gpu  -t cad-server:gpu .    # + onnxruntime-gpu with CUDA/cuDNN wheels
#   docker build --target trainer     -t cad-trainer .       # + torch/torchvision
#   docker build --target trainer-gpu -t cad-trainer:gpu .   # + CUDA torch and onnxruntime-gpu
#   docker build --target review-ui   -t cad-review-ui .     # the reviewers' web page (no torch)
#
# Air-gapped builders: nothing here names an external host. pip reads its index from the build
# arguments PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST and PIP_FIND_LINKS (declared,
# without defaults, in every stage that runs pip); TORCH_INDEX_URL, if given, is where torch and
# torchvision come from in the trainer image (e.g. your mirror of PyTorch's CPU wheel index; without
# it the trainer gets the index's default torch, on PyPI the CUDA build).
# PYTHON_IMAGE is the base: it must have python3 (3.10+) and pip on PATH in an environment root
# can install into, useradd, and the CA that signs your index trusted. deploy/build-local.sh
# makes such a base with debootstrap and builds with the host's own pip configuration.
#
# GPU images need only the NVIDIA driver on the host (NVIDIA Container Toolkit): CUDA and cuDNN
# come from pip wheels (onnxruntime-gpu[cuda,cudnn], torch). The CPU serving image installs
# onnxruntime (the same API, without the CUDA provider it could not use) instead of
# onnxruntime-gpu.
# Run: docker run -p 50051:50051 -p 9464:9464 -v $PWD/registry:/models cad-server

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- wheels of this project
FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY cad ./cad
COPY service ./service
COPY trainer ./trainer
COPY cadcli ./cadcli
COPY reviewui ./reviewui
COPY gateway ./gateway
# The project's wheel, and its dependencies for the CPU serving image (onnxruntime in place of
# onnxruntime-gpu), read from pyproject.toml so the two lists cannot drift.
# constraints.txt is the lock (scripts/lock.sh): every pip install below takes its releases.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels -c constraints.txt . \
    && cp constraints.txt /wheels/ \
    && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/wheels/requirements-cpu.txt', 'w').write(''.join(d.replace('onnxruntime-gpu', 'onnxruntime') + chr(10) for d in deps))"

# ---------------------------------------------------------------- common runtime base
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CAD_REGISTRY_ROOT=/models \
    CAD_STORE_URL=sqlite:////data/labels.sqlite3 \
    CAD_ARCHIVE_ROOT=/data/archive
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cad \
    && mkdir -p /models /data/archive /data/spool /data/gateway \
    && chown cad /models /data /data/archive /data/spool /data/gateway

# ---------------------------------------------------------------- the project on CPU (no torch)
FROM runtime AS cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
# The wheels are mounted for the install, never copied into a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir -c /wheels/constraints.txt -r /wheels/requirements-cpu.txt \
    && pip install --no-cache-dir --no-deps /wheels/*.whl \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch must not be in the serving image'"

# ---------------------------------------------------------------- serving image (CPU)
FROM cpu AS server
ENV CAD_PORT=50051 CAD_METRICS_PORT=9464
USER 10001
EXPOSE 50051 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "service.rpc.healthcheck"]
ENTRYPOINT ["cad-server"]

# ---------------------------------------------------------------- serving image (CUDA)
FROM server AS server-gpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
USER root
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip uninstall -y onnxruntime \
    && pip install --no-cache-dir -c /wheels/constraints.txt "onnxruntime-gpu[cuda,cudnn]" \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None"
ENV CAD_PROVIDERS=auto CAD_IO_BINDING=auto CAD_BATCH_RUNNERS=2
USER 10001

# ---------------------------------------------------------------- reviewers' web page
FROM cpu AS review-ui
ENV CAD_REVIEW_UI_HOST=0.0.0.0 CAD_REVIEW_UI_PORT=8080
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "reviewui.healthcheck"]
ENTRYPOINT ["cad", "review-ui"]

# ---------------------------------------------------------------- DICOM gateway (PACS in and out)
FROM cpu AS dicom-gateway
ENV CAD_GATEWAY_HOST=0.0.0.0 CAD_GATEWAY_PORT=11112 CAD_GATEWAY_SPOOL_DIR=/data/gateway
USER 10001
EXPOSE 11112 9466
ENTRYPOINT ["cad", "dicom-gateway"]

# ---------------------------------------------------------------- trainer image
FROM runtime AS trainer
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
ARG TORCH_INDEX_URL
ENV CAD_WATCH_METRICS_PORT=9465
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        -c /wheels/constraints.txt "torch==2.14.1" "torchvision==0.29.1" \
    && pip install --no-cache-dir -c /wheels/constraints.txt "$(ls /wheels/*.whl)[train]"
USER 10001
EXPOSE 9465
ENTRYPOINT ["cad"]
CMD ["train", "watch"]

# ---------------------------------------------------------------- trainer image (CUDA torch)
FROM runtime AS trainer-gpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
ENV CAD_WATCH_METRICS_PORT=9465
# PyPI's torch wheels for Linux are the CUDA build.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir -c /wheels/constraints.txt "torch==2.14.1" "torchvision==0.29.1" \
    && pip install --no-cache-dir -c /wheels/constraints.txt "$(ls /wheels/*.whl)[train]" \
        "onnxruntime-gpu[cuda,cudnn]"
USER 10001
EXPOSE 9465
ENTRYPOINT ["cad"]
CMD ["train", "watch"]
