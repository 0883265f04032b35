# kspan agent image. BPF objects are built CO-RE at image build time; the host's
# kernel BTF is mounted at run time (docker-compose.yml).
FROM node:24-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      clang llvm libbpf-dev libbpf1 bpftool make ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kspan
COPY package.json package-lock.json ./
RUN npm ci --omit=dev
COPY . .
RUN make -C bpf
ENTRYPOINT ["/opt/kspan/bin/kspan"]
