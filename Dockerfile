# The kspan agent image. Two stages:
#   bpf      clang and libbpf's headers build the BPF objects, CO-RE, so they load
#            on any kernel with BTF (the host's is mounted at run time);
#   runtime  Node 24 and libbpf1, kspan's sources and production dependencies,
#            the built objects. Nothing else: no compiler, no shell tools beyond
#            the base image's.
# docker-compose.yml and deploy/kubernetes/ run it as a node agent
# (`kspan run --all`); README "Running it in containers" has the details.

FROM debian:bookworm-slim AS bpf
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang llvm libbpf-dev bpftool make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY bpf/ bpf/
# vmlinux.h is generated from the build host's BTF; CO-RE relocates at load time.
RUN make -C bpf .output/kspan.bpf.o .output/probe.bpf.o

FROM node:24-bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libbpf1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kspan
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY bin/ bin/
COPY src/ src/
COPY --from=bpf /src/bpf/.output/kspan.bpf.o /src/bpf/.output/probe.bpf.o bpf/.output/
# Self-metrics for Prometheus (--metrics-listen 0.0.0.0:9464 in the examples).
EXPOSE 9464
ENTRYPOINT ["/opt/kspan/bin/kspan"]
CMD ["run", "--all"]
