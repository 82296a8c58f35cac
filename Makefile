# relay: the two commands a newcomer needs are `make demo` and `make test`.
# Both install PostgreSQL and RabbitMQ when missing (as root, via apt) or
# say exactly what to install.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BUILD     := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)"
PG_BIN    := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) $(shell command -v initdb 2>/dev/null))
RABBIT    := $(firstword $(wildcard /usr/lib/rabbitmq/bin/rabbitmq-server) $(shell command -v rabbitmq-server 2>/dev/null))
SINK      ?= rabbitmq
IMAGE     ?= relay

.PHONY: build docker test unit integration demo deps vet clean

build:
	$(BUILD) -o bin/relay ./cmd/relay

## docker: the container image, IMAGE:VERSION and IMAGE:latest (see Dockerfile)
docker:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .

## deps: install the services tests and the demo start (PostgreSQL, RabbitMQ)
deps:
	@missing=""; \
	[ -n "$(PG_BIN)" ] || missing="$$missing postgresql"; \
	[ -n "$(RABBIT)" ] || missing="$$missing rabbitmq-server"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -q && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
		else \
			echo "missing:$$missing. Install them with: sudo apt-get install -y$$missing" >&2; exit 1; \
		fi; \
	fi

vet:
	$(GO) vet ./...

## test: unit and integration tests against throwaway PostgreSQL and RabbitMQ
test: deps vet
	$(GO) test -race -count=1 ./relay/...
	$(GO) test -count=1 -timeout 30m ./...

unit:
	$(GO) test -count=1 ./relay/... ./cmd/...

integration: deps
	$(GO) test -count=1 -timeout 30m ./integration/...

## demo: the whole path on throwaway local services, then clean up;
## SINK=kafka publishes to a throwaway Kafka-protocol broker (kfake) instead
demo: deps build
	$(GO) run ./integration/demo -relay bin/relay -sink $(SINK)

clean:
	rm -rf bin
