# The kspan agent image. Three stages:
#   bpf      clang and libbpf's headers build the BPF objects, CO-RE, so they load
#            on any kernel with BTF (the host's is mounted at run time);
#   js       TypeScript compiles src/ to dist/ (scripts/build-js.sh): the agent
#            runs plain JavaScript, without Node's type stripper in memory;
#   runtime  Node 24 and libbpf1, the compiled agent and its production
#            dependencies, the built objects. Nothing else: no compiler, no
#            sources, no shell tools beyond the base image's.
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

FROM node:24-bookworm-slim AS js
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build-js.sh scripts/
COPY src/ src/
RUN bash scripts/build-js.sh

FROM node:24-bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libbpf1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kspan
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY bin/ bin/
COPY --from=js /src/dist/ dist/
COPY --from=bpf /src/bpf/.output/kspan.bpf.o /src/bpf/.output/probe.bpf.o bpf/.output/
# Self-metrics for Prometheus (--metrics-listen 0.0.0.0:9464 in the examples).
EXPOSE 9464
ENTRYPOINT ["/opt/kspan/bin/kspan"]
CMD ["run", "--all"]
