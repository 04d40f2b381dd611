# The sidecar image: slim, non-root, no torch and no Triton in it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aios aios
COPY aios_cli aios_cli
COPY gateway gateway
COPY sidecar sidecar
COPY proto proto
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin aios
COPY --from=build /install /usr/local
USER 10001
EXPOSE 8090 8091
ENTRYPOINT ["aios", "sidecar", "--config", "/etc/aios/stack.yaml"]
