# Serving image: ONNX Runtime (onnxruntime-gpu, which falls back to the CPU provider cleanly),
# gRPC, pydicom with its JPEG/JPEG-LS/JPEG 2000/RLE plugins. No torch.
# Build:  docker build -t cad-server .
# Run:    docker run -p 50051:50051 -p 9464:9464 -v $PWD/registry:/models cad-server
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY trainer ./trainer
COPY cadcli ./cadcli
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS server
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CAD_REGISTRY_ROOT=/models \
    CAD_PORT=50051 \
    CAD_METRICS_PORT=9464
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch must not be in the serving image'" \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cad \
    && mkdir -p /models && chown cad /models
USER 10001
EXPOSE 50051 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]
ENTRYPOINT ["cad-server"]
