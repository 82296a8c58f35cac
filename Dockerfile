# syntax=docker/dockerfile:1
# The relay as a static binary on a minimal, non-root image. Build it with
# `make docker`, which passes VERSION; cmd/relay/dockerfile_test.go keeps the
# go build line below identical to the Makefile's BUILD, and the exposed port
# equal to RELAY_HTTP_ADDR's default; deploy/check runs BuildKit's parser and
# linter on it (docker build --check).

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/relay ./cmd/relay

# distroless/static has no shell and no package manager: CA certificates,
# /etc/passwd with the nonroot user (65532) and tzdata are all it carries.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="relay" \
      org.opencontainers.image.description="PostgreSQL outbox to RabbitMQ or Kafka over logical replication" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/relay /usr/local/bin/relay
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading
# the image's /etc/passwd (it refuses a user given by name).
USER 65532:65532
EXPOSE 8080
# No HEALTHCHECK: the image has no shell and no HTTP client to run one with,
# and the relay has no subcommand that asks its own /healthz. Kubernetes
# ignores HEALTHCHECK and probes /healthz and /readyz itself
# (deploy/kubernetes/deployment.yaml); elsewhere, point the supervisor's or
# load balancer's HTTP check at them.
ENTRYPOINT ["/usr/local/bin/relay"]
