# Multi-stage build of the CAD service.
#
#   docker build --target server      -t cad-server .        # serving: ONNX Runtime, no torch, non-root
#   docker build --target server-gpu  -t cad-server:gpu .    # + CUDA/cuDNN wheels for the CUDA provider
#   docker build --target trainer     -t cad-trainer .       # + torch/torchvision (CPU wheels)
#   docker build --target trainer-gpu -t cad-trainer:gpu .   # + CUDA torch
#   docker build --target review-ui   -t cad-review-ui .     # the reviewers' web page (no torch)
#
# GPU images need only the NVIDIA driver on the host (NVIDIA Container Toolkit): CUDA and cuDNN
# come from pip wheels (onnxruntime-gpu[cuda,cudnn], torch). ONNX Runtime falls back to the CPU
# provider cleanly where no GPU is visible (CAD_PROVIDERS=auto).
# Run: docker run -p 50051:50051 -p 9464:9464 -v $PWD/registry:/models cad-server

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- wheels of this project
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY trainer ./trainer
COPY cadcli ./cadcli
COPY reviewui ./reviewui
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---------------------------------------------------------------- common runtime base
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CAD_REGISTRY_ROOT=/models \
    CAD_STORE_URL=sqlite:////data/labels.sqlite3 \
    CAD_ARCHIVE_ROOT=/data/archive
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cad \
    && mkdir -p /models /data && chown cad /models /data

# ---------------------------------------------------------------- serving image (CPU)
FROM runtime AS server
ENV CAD_PORT=50051 CAD_METRICS_PORT=9464
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch must not be in the serving image'"
USER 10001
EXPOSE 50051 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "service.rpc.healthcheck"]
ENTRYPOINT ["cad-server"]

# ---------------------------------------------------------------- serving image (CUDA)
FROM server AS server-gpu
USER root
RUN pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]" \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None"
ENV CAD_PROVIDERS=auto CAD_IO_BINDING=auto CAD_BATCH_RUNNERS=2
USER 10001

# ---------------------------------------------------------------- reviewers' web page
FROM runtime AS review-ui
ENV CAD_REVIEW_UI_HOST=0.0.0.0 CAD_REVIEW_UI_PORT=8080
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None"
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "reviewui.healthcheck"]
ENTRYPOINT ["cad", "review-ui"]

# ---------------------------------------------------------------- trainer image (CPU torch)
FROM runtime AS trainer
ENV CAD_WATCH_METRICS_PORT=9465
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple "torch==2.14.1" "torchvision==0.29.1" \
    && pip install --no-cache-dir "$(ls /wheels/*.whl)[train]" && rm -rf /wheels
USER 10001
EXPOSE 9465
ENTRYPOINT ["cad"]
CMD ["train", "watch"]

# ---------------------------------------------------------------- trainer image (CUDA torch)
FROM runtime AS trainer-gpu
ENV CAD_WATCH_METRICS_PORT=9465
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1" \
    && pip install --no-cache-dir "$(ls /wheels/*.whl)[train]" "onnxruntime-gpu[cuda,cudnn]" && rm -rf /wheels
USER 10001
EXPOSE 9465
ENTRYPOINT ["cad"]
CMD ["train", "watch"]
