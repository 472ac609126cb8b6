# One image for every fleetloop service: `fleetloop serve <service>` picks the service.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY libs libs
COPY services services
RUN pip install --no-cache-dir . \
 && python -m grpc_tools.protoc -Iprotos --python_out=libs --pyi_out=libs --grpc_python_out=libs protos/fleetloop/v1/*.proto \
 && touch libs/fleetloop/v1/__init__.py \
 && pip install --no-cache-dir --no-deps .
ENTRYPOINT ["fleetloop"]
