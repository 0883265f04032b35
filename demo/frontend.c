/*
 * The demo's native service: a small HTTP/1.1 server on plain sockets that
 * publishes its active span the OTEP 4947 way (`otel_thread_ctx_v1`, a TLS
 * pointer exported in .dynsym, to a {trace_id, span_id, valid, flags, attrs}
 * record), so kspan can hang the kernel's view of each request under it.
 *
 *   frontend --backend HOST:PORT [--port P]
 *
 * One thread per connection, keep-alive. For each request (GET /checkout?bytes=N,
 * with a `traceparent` from the demo's driver):
 *   - a server span: its id in the thread's record while the request is
 *     answered (the request headers are read before the id is known; kspan
 *     attributes those bytes to the span that answers them);
 *   - a client span around a call to the backend (a new connection per call,
 *     GET /data?bytes=N, `traceparent` passed on): its id in the record during
 *     connect/send/recv;
 *   - the response, under the server span again; then no context.
 *
 * It has no tracing SDK: it prints its spans on stdout, one JSON object per line,
 * and the demo shows (or exports) them as the application's spans:
 *   {"ready":true,"port":N,"pid":N}
 *   {"span":{"service":"demo-frontend","name":…,"kind":"server"|"client","trace_id":…,
 *     "span_id":…,"parent_span_id":…,"start_ns":"…","end_ns":"…","tid":N,"status":"ok"|"error",
 *     "attrs":{…}}}
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "otel_thread_ctx.h" /* include/: the OTEP 4947 record */

/* The TLS pointer kspan reads; exported with -Wl,--export-dynamic-symbol. */
__thread void *otel_thread_ctx_v1;

static struct sockaddr_in backend;
static char backend_host[64];
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- thread context ------------------------------------------------------ */

/* Each thread owns one record and rewrites it in place: valid = 0 while the ids
 * change, so a reader never takes a half-written context. */
static __thread struct otel_thread_ctx_record ctx_record;

static void ctx_set(const uint8_t trace_id[16], const uint8_t span_id[8], uint8_t flags)
{
	volatile struct otel_thread_ctx_record *r = &ctx_record;
	r->valid = 0;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	memcpy((void *)r->trace_id, trace_id, 16);
	memcpy((void *)r->span_id, span_id, 8);
	r->trace_flags = flags;
	r->attrs_size = 0;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	r->valid = 1;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	otel_thread_ctx_v1 = (void *)r;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
}

static void ctx_clear(void)
{
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	otel_thread_ctx_v1 = NULL;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* ---- small helpers ------------------------------------------------------- */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void random_id(uint8_t *dst, size_t n)
{
	do {
		if (getrandom(dst, n, 0) != (ssize_t)n)
			abort();
		/* an all-zero id is invalid in OpenTelemetry */
		for (size_t i = 0; i < n; i++)
			if (dst[i])
				return;
	} while (1);
}

static void to_hex(char *dst, const uint8_t *src, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		dst[2 * i] = digits[src[i] >> 4];
		dst[2 * i + 1] = digits[src[i] & 15];
	}
	dst[2 * n] = 0;
}

static int from_hex(uint8_t *dst, const char *src, size_t n)
{
	int nonzero = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		if (sscanf(src + 2 * i, "%2x", &v) != 1)
			return -1;
		dst[i] = (uint8_t)v;
		nonzero |= v != 0;
	}
	return nonzero ? 0 : -1;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* A connection's receive buffer: headers are parsed out of it, the rest kept. */
struct conn {
	int fd;
	char buf[16384];
	size_t len;
};

/* Reads until a full header block is buffered; returns its length (incl. CRLFCRLF), 0 on EOF, -1 on error. */
static ssize_t read_headers(struct conn *c)
{
	for (;;) {
		char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
		if (end)
			return end + 4 - c->buf;
		if (c->len == sizeof(c->buf))
			return -1;
		ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 && c->len == 0 ? 0 : -1;
		c->len += (size_t)r;
	}
}

/* The value of header `name` (case-insensitive) in a header block, copied into out. */
static int header(const char *hdrs, size_t len, const char *name, char *out, size_t outlen)
{
	size_t nl = strlen(name);
	const char *p = hdrs, *end = hdrs + len;
	while (p < end) {
		const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
		if (!eol)
			break;
		if ((size_t)(eol - p) > nl && p[nl] == ':' && !strncasecmp(p, name, nl)) {
			const char *v = p + nl + 1;
			while (v < eol && *v == ' ')
				v++;
			size_t n = (size_t)(eol - v);
			if (n >= outlen)
				n = outlen - 1;
			memcpy(out, v, n);
			out[n] = 0;
			return 0;
		}
		p = eol + 2;
	}
	return -1;
}

/* Consumes and discards `n` bytes of body (some may already be buffered). */
static int skip_body(struct conn *c, size_t hdr_len, size_t n)
{
	size_t have = c->len - hdr_len;
	size_t take = have < n ? have : n;
	memmove(c->buf, c->buf + hdr_len + take, have - take);
	c->len = have - take;
	n -= take;
	char sink[16384];
	while (n) {
		ssize_t r = recv(c->fd, sink, n < sizeof(sink) ? n : sizeof(sink), 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		n -= (size_t)r;
	}
	return 0;
}

struct span {
	const char *name;
	const char *kind;
	uint8_t trace_id[16];
	uint8_t span_id[8];
	uint8_t parent_id[8];
	int has_parent;
	uint64_t start_ns, end_ns;
	int ok;
	char attrs[512]; /* JSON members, without braces */
};

static void emit_span(const struct span *s)
{
	char trace[33], span[17], parent[17];
	to_hex(trace, s->trace_id, 16);
	to_hex(span, s->span_id, 8);
	to_hex(parent, s->parent_id, 8);
	pthread_mutex_lock(&out_lock);
	printf("{\"span\":{\"service\":\"demo-frontend\",\"name\":\"%s\",\"kind\":\"%s\",\"trace_id\":\"%s\","
	       "\"span_id\":\"%s\",\"parent_span_id\":%s%s%s,\"start_ns\":\"%llu\",\"end_ns\":\"%llu\","
	       "\"tid\":%ld,\"status\":\"%s\",\"attrs\":{%s}}}\n",
	       s->name, s->kind, trace, span, s->has_parent ? "\"" : "", s->has_parent ? parent : "null",
	       s->has_parent ? "\"" : "", (unsigned long long)s->start_ns, (unsigned long long)s->end_ns,
	       (long)syscall(SYS_gettid), s->ok ? "ok" : "error", s->attrs);
	fflush(stdout);
	pthread_mutex_unlock(&out_lock);
}

/* ---- the backend call ---------------------------------------------------- */

/* GET /data?bytes=N on a new connection, under a client span; returns the body size or -1. */
static long call_backend(const struct span *server, uint8_t flags, long bytes)
{
	struct span cs = { .name = "GET /data", .kind = "client", .has_parent = 1, .ok = 0 };
	memcpy(cs.trace_id, server->trace_id, 16);
	memcpy(cs.parent_id, server->span_id, 8);
	random_id(cs.span_id, 8);
	cs.start_ns = now_ns();
	ctx_set(cs.trace_id, cs.span_id, flags);

	long body = -1;
	int status = 0;
	const char *error = NULL;
	struct conn *c = malloc(sizeof(*c));
	c->len = 0;
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	struct timeval tv = { .tv_sec = 15 };
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(c->fd, (struct sockaddr *)&backend, sizeof(backend)) < 0) {
		error = "connect";
		goto out;
	}
	char trace[33], span[17], req[512];
	to_hex(trace, cs.trace_id, 16);
	to_hex(span, cs.span_id, 8);
	int n = snprintf(req, sizeof(req),
			 "GET /data?bytes=%ld HTTP/1.1\r\nHost: %s\r\ntraceparent: 00-%s-%s-%02x\r\n"
			 "User-Agent: kspan-demo-frontend\r\nConnection: close\r\n\r\n",
			 bytes, backend_host, trace, span, flags);
	if (write_all(c->fd, req, (size_t)n) < 0) {
		error = "send";
		goto out;
	}
	ssize_t hl = read_headers(c);
	char cl[32];
	if (hl <= 0 || sscanf(c->buf, "HTTP/1.%*d %d", &status) != 1 ||
	    header(c->buf, (size_t)hl, "content-length", cl, sizeof(cl)) < 0) {
		error = "bad response";
		goto out;
	}
	body = atol(cl);
	if (skip_body(c, (size_t)hl, (size_t)body) < 0) {
		error = "short body";
		body = -1;
		goto out;
	}
	cs.ok = status == 200;
out:
	close(c->fd);
	free(c);
	cs.end_ns = now_ns();
	/* back to the server span for the response */
	ctx_set(server->trace_id, server->span_id, flags);
	snprintf(cs.attrs, sizeof(cs.attrs),
		 "\"http.request.method\":\"GET\",\"server.address\":\"%s\",\"server.port\":%d,"
		 "\"http.response.status_code\":%d,\"http.response.body.size\":%ld%s%s%s",
		 backend_host, ntohs(backend.sin_port), status, body, error ? ",\"error.type\":\"" : "",
		 error ? error : "", error ? "\"" : "");
	emit_span(&cs);
	return cs.ok ? body : -1;
}

/* ---- the server ---------------------------------------------------------- */

static void *serve(void *arg)
{
	struct conn *c = arg;
	for (;;) {
		ctx_clear();
		ssize_t hl = read_headers(c);
		if (hl <= 0)
			break;
		struct span ss = { .name = "GET /checkout", .kind = "server", .ok = 1 };
		ss.start_ns = now_ns();
		uint8_t flags = 1;
		char tp[128];
		if (header(c->buf, (size_t)hl, "traceparent", tp, sizeof(tp)) == 0 && strlen(tp) >= 55 &&
		    from_hex(ss.trace_id, tp + 3, 16) == 0 && from_hex(ss.parent_id, tp + 36, 8) == 0) {
			unsigned f = 1;
			sscanf(tp + 53, "%2x", &f);
			flags = (uint8_t)f;
			ss.has_parent = 1;
		} else {
			random_id(ss.trace_id, 16);
		}
		random_id(ss.span_id, 8);
		ctx_set(ss.trace_id, ss.span_id, flags);

		long bytes = 20000 + (long)(random() % 180000);
		char *q = memmem(c->buf, (size_t)hl, "bytes=", 6);
		if (q && q < (char *)memchr(c->buf, '\n', (size_t)hl))
			bytes = atol(q + 6);
		char cl[32];
		size_t req_body = header(c->buf, (size_t)hl, "content-length", cl, sizeof(cl)) == 0 ? (size_t)atol(cl) : 0;
		if (skip_body(c, (size_t)hl, req_body) < 0)
			break;

		long got = call_backend(&ss, flags, bytes);
		char body[256], resp[512];
		int bn = snprintf(body, sizeof(body), "{\"backend_bytes\":%ld}\n", got);
		int rn = snprintf(resp, sizeof(resp),
				  "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
				  got >= 0 ? "200 OK" : "502 Bad Gateway", bn, body);
		int sent = write_all(c->fd, resp, (size_t)rn);
		ss.end_ns = now_ns();
		ss.ok = got >= 0 && sent == 0;
		snprintf(ss.attrs, sizeof(ss.attrs),
			 "\"http.request.method\":\"GET\",\"url.path\":\"/checkout\",\"http.response.status_code\":%d",
			 got >= 0 ? 200 : 502);
		ctx_clear();
		emit_span(&ss);
		if (sent < 0)
			break;
	}
	ctx_clear();
	close(c->fd);
	free(c);
	return NULL;
}

int main(int argc, char **argv)
{
	int port = 0;
	const char *be = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--backend") && i + 1 < argc)
			be = argv[++i];
	}
	const char *colon = be ? strrchr(be, ':') : NULL;
	if (!colon || (size_t)(colon - be) >= sizeof(backend_host)) {
		fprintf(stderr, "usage: frontend --backend HOST:PORT [--port P]\n");
		return 2;
	}
	memcpy(backend_host, be, (size_t)(colon - be));
	backend.sin_family = AF_INET;
	backend.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, backend_host, &backend.sin_addr) != 1) {
		fprintf(stderr, "frontend: %s: not an IPv4 address\n", backend_host);
		return 2;
	}
	unsigned seed;
	random_id((uint8_t *)&seed, sizeof(seed));
	srandom(seed);

	int ls = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(sa);
	if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 128) < 0 ||
	    getsockname(ls, (struct sockaddr *)&sa, &sl) < 0) {
		perror("frontend: listen");
		return 1;
	}
	printf("{\"ready\":true,\"port\":%d,\"pid\":%d}\n", ntohs(sa.sin_port), getpid());
	fflush(stdout);

	for (;;) {
		int fd = accept(ls, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("frontend: accept");
			return 1;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct conn *c = malloc(sizeof(*c));
		c->fd = fd;
		c->len = 0;
		pthread_t t;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&t, &attr, serve, c) != 0) {
			close(fd);
			free(c);
		}
		pthread_attr_destroy(&attr);
	}
}
