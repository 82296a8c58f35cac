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

.PHONY: build docker test unit integration deploy-check demo bench bench-profile deps vet clean

build:
	$(BUILD) -o bin/relay ./cmd/relay

## docker: the container image, IMAGE:VERSION and IMAGE:latest (see Dockerfile)
docker:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .

## deps: install the services tests and the demo start (PostgreSQL, RabbitMQ)
## and, for the tests, TEST_TOOLS (Debian package, or package:command when
## the names differ): kcat, the command-line client of librdkafka, the Kafka
## tests' second reader; promtool, which unit-tests the alert rules
## (cmd/relay/alerts_test.go) and checks the Prometheus configuration;
## systemd-analyze, which verifies the systemd unit (deploy/check)
integration: TEST_TOOLS := kcat
test: TEST_TOOLS := kcat prometheus:promtool systemd:systemd-analyze
deps:
	@missing=""; \
	[ -n "$(PG_BIN)" ] || missing="$$missing postgresql"; \
	[ -n "$(RABBIT)" ] || missing="$$missing rabbitmq-server"; \
	for tool in $(TEST_TOOLS); do command -v $${tool#*:} >/dev/null || missing="$$missing $${tool%%:*}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -q && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
		else \
			echo "missing:$$missing. Install them with: sudo apt-get install -y$$missing" >&2; exit 1; \
		fi; \
	fi

## vet: go vet, and the relay builds for macOS and Windows (Linux-only fast
## paths sit behind build tags)
vet:
	$(GO) vet ./...
	cd deploy/check && $(GO) vet ./...
	GOOS=darwin $(GO) build -o /dev/null ./cmd/relay
	GOOS=windows $(GO) build -o /dev/null ./cmd/relay

## test: unit and integration tests against throwaway PostgreSQL and RabbitMQ,
## each package once. Every package runs under the race detector but
## ./integration, which runs the relay binary as a child process: raced, its
## own Kafka consumer falls too far behind the relay for the redelivery
## tests. The two sets run side by side, one package of each at a time.
RACE_PKGS = $(shell $(GO) list ./... | grep -v '/integration$$')
test: deps vet
	@echo "$(GO) test -count=1 -timeout 30m ./integration & $(GO) test -race -count=1 -p 1 -timeout 30m <every other package>; then cd deploy/check && $(GO) test -count=1 ./..."
	@$(GO) test -count=1 -timeout 30m ./integration & integration=$$!; \
	$(GO) test -race -count=1 -p 1 -timeout 30m $(RACE_PKGS); race=$$?; \
	wait $$integration; integration=$$?; \
	cd deploy/check && $(GO) test -count=1 ./...; deploy=$$?; \
	[ $$race = 0 ] && [ $$integration = 0 ] && [ $$deploy = 0 ]

## deploy-check: every file under deploy/ and the Dockerfile, checked by the
## libraries and tools that read them for real (docs/deploying.md, What is
## checked). A Go module of its own, deploy/check, so that the relay's
## go.mod does not carry their dependencies; go test ./... at the top does
## not reach into it, so it is named here. Without make deps, a missing
## promtool or systemd-analyze fails its check, naming the package.
deploy-check:
	cd deploy/check && $(GO) test -count=1 ./...

unit:
	$(GO) test -count=1 ./relay/... ./cmd/...

integration: deps
	$(GO) test -count=1 -timeout 30m ./integration/...

## demo: the whole path on throwaway local services, then clean up;
## SINK=kafka publishes to a throwaway Kafka-protocol broker (kfake) instead,
## SINK=rabbitmq-stream to a RabbitMQ stream (exactly once)
demo: deps build
	$(GO) run ./integration/demo -relay bin/relay -sink $(SINK)

## bench: throughput, latency and resources of bin/relay on throwaway services
## (docs/benchmarks.md); BENCH_ROWS rows per backlog, BENCH_DURATION per live rate
BENCH_ROWS     ?= 200000
BENCH_DURATION ?= 30s
BENCH_FLAGS    ?=
bench: deps build
	$(GO) run ./integration/bench -relay bin/relay -rows $(BENCH_ROWS) -duration $(BENCH_DURATION) $(BENCH_FLAGS)

## bench-profile: the drains again with a relay built with -tags pprof, writing
## CPU and allocation profiles to bench-profiles/
bench-profile: deps
	CGO_ENABLED=0 $(GO) build -tags pprof -o bin/relay-pprof ./cmd/relay
	$(GO) run ./integration/bench -relay bin/relay-pprof -rows $(BENCH_ROWS) -scenarios ceiling,drain -profile bench-profiles $(BENCH_FLAGS)

clean:
	rm -rf bin
