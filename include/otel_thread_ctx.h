/*
 * OTEP 4947 thread context, the writer's side: the record a thread publishes
 * through its TLS pointer `otel_thread_ctx_v1` (a symbol exported in .dynsym, so
 * that kspan finds it). Packed, host byte order. A reader takes the record only
 * while `valid` is 1: a writer that rewrites a record in place sets valid = 0
 * first and 1 last, with compiler barriers between.
 *
 * attrs: {key u8, len u8, value[len]}..., attrs_size bytes of them (kspan reads
 * the first 52).
 *
 * Included by kspan's demo service (demo/frontend.c) and its C test fixtures.
 */
#ifndef OTEL_THREAD_CTX_H
#define OTEL_THREAD_CTX_H
#include <stdint.h>

struct otel_thread_ctx_record {
	uint8_t trace_id[16];
	uint8_t span_id[8];
	uint8_t valid;
	uint8_t trace_flags;
	uint16_t attrs_size;
	uint8_t attrs[64];
} __attribute__((packed));

#endif
