/* nvtx_record.h - NVTX ranges and marks recorded by tbprof itself while
 * capturing (TBPROF_NVTX=on), for jobs whose NVTX calls reach our injection
 * (preload/nvtx_inject.c) rather than CUPTI's.
 *
 * The NVTX handlers run on the job's threads: begin() copies the name into a
 * bounded arena and stamps the start; end() stamps the end. Neither blocks,
 * allocates or does I/O; when the capture's share of TBPROF_BUFFER_MB is full
 * the range is counted as dropped. The "nvtx" source's collect() puts the
 * ranges on their thread's /host:CPU line (category user annotation), the
 * same place CUPTI's marker records go.
 *
 * Ranges opened before the capture started are not recorded; ranges still
 * open when it stops end at the stop.
 */
#ifndef TBPROF_PRELOAD_NVTX_RECORD_H
#define TBPROF_PRELOAD_NVTX_RECORD_H

#include <stdatomic.h>
#include <stdint.h>
#include <wchar.h>

#include "source.h"

/* A range's name as NVTX passed it: ascii (or UTF-8) or wide; and its
 * domain (0: NVTX's default domain, else a tb_nvtx_domain_name id). step:
 * for nvtx_inject.c, 0 when the name is to be matched with the step
 * pattern, else 1 + that match (decided when the string was registered),
 * step_num its step number. */
typedef struct tb_nvtx_name {
    const char *a;
    const wchar_t *w;
    uint16_t dom;
    uint8_t step;
    int64_t step_num;
} tb_nvtx_name;

/* Nonzero while a capture records NVTX (one relaxed load on the idle path). */
extern atomic_int tb_nvtx_recording;

/* tb_nvtx_rec_begin flags */
#define TB_NVTX_REC_MARK 1 /* an instant: closed at once */
#define TB_NVTX_REC_STEP 2 /* a range that began a step (TBPROF_NVTX_STEP) */

/* Open a range. Returns a token for tb_nvtx_rec_end(), with bit 63 set; 0
 * when nothing was recorded. */
uint64_t tb_nvtx_rec_begin(tb_nvtx_name n, int flags);
/* Close the range `token` (0 and tokens of an earlier capture are ignored). */
void tb_nvtx_rec_end(uint64_t token);

/* Drop the open range `token` from the profile (its end will not be known:
 * push/pop nesting deeper than the per-thread stack); counted as dropped. */
void tb_nvtx_rec_forget(uint64_t token);
/* The push/pop levels per thread and domain that nvtx_inject.c keeps. */
#define TB_NVTX_STACK_DEPTH 64

#define TB_NVTX_TOKEN_BIT ((uint64_t)1 << 63)

/* 1 once an NVTX instance in the process attached to our injection
 * (nvtx_inject.c); captures before that take no memory for NVTX. */
int tb_nvtx_attached(void);

/* The name of NVTX domain `id` (nvtxDomainCreateA/W, nvtx_inject.c), NULL
 * for 0 (the default domain) and unknown ids. Names live as long as the
 * process. */
const char *tb_nvtx_domain_name(unsigned id);

/* The "nvtx" source (start/stop/collect of the recording). */
tb_source *tb_nvtx_source(void);

/* UTF-8 of a wide string into out[cap] (NUL-terminated, cut at a character
 * boundary); returns the bytes written before the NUL. */
size_t tb_wide_to_utf8(const wchar_t *w, char *out, size_t cap);

#endif
