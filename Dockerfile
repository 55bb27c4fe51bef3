# signrelay container image: a static binary on distroless, as nonroot.
#
#   docker build -t signrelay .
#   docker run --read-only -p 8080:8080 signrelay
#
# The root file system can be read-only (--read-only, read_only: true):
# the relay writes nothing but what its configuration names, which is the
# embedded NATS server's cluster.embedded.store_dir when the relay is a
# cluster node with embedded NATS (give it a tmpfs or a volume; see
# compose.yaml and docs/deploy.md). tests/deploy builds the binary with
# this file's `go build` line and checks that it is static.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static (no cgo, no libc), without build paths or symbol tables. The
# module version and VCS revision (signrelay -version) come from .git,
# which .dockerignore keeps in the build context for that reason.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/signrelay .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/signrelay /signrelay
# The default configuration: listen on :8080. Mount a file over it or
# pass -config; the health check reads the same file from this directory.
COPY --chmod=0444 deploy/image.yaml /etc/signrelay/config.yaml
WORKDIR /etc/signrelay
USER nonroot:nonroot
EXPOSE 8080
# No shell or curl in the image: the relay probes its own GET /readyz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["/signrelay", "healthcheck"]
ENTRYPOINT ["/signrelay"]
