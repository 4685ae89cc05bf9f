/* trace.h - tbprof's in-memory profile, shaped like an XSpace.
 *
 * A tb_space holds planes (/host:CPU, /device:GPU:0, ...); a plane holds
 * lines (threads, streams) and interns every event name and stat name once;
 * a line holds compact fixed-size events whose stats sit contiguously in the
 * line's stat pool. Writers (xspace_write.c, chrome_write.c) turn one
 * tb_space into files; sources (CUPTI, the CPU sampler, the step tracker)
 * fill it at the end of a capture.
 *
 * Times are int64 nanoseconds since the Unix epoch (see clock.h for how
 * sources convert their clocks). Ids are small positive integers (>= 1).
 *
 * Memory is bounded: tb_space_set_limit() caps the bytes held by events and
 * stats; events past the cap are dropped and counted (tb_space_dropped()).
 * Functions that allocate return a negative errno (-ENOMEM, -ENOSPC when the
 * cap is hit) or 0 / a positive id; nothing here aborts.
 *
 * Not thread-safe: one thread (the agent thread) builds a space at a time.
 */
#ifndef TBPROF_AGENT_TRACE_H
#define TBPROF_AGENT_TRACE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tb_stat_type {
    TB_STAT_INT64 = 1,
    TB_STAT_UINT64 = 2,
    TB_STAT_DOUBLE = 3,
    TB_STAT_REF = 4, /* interned string: v.ref is a stat-metadata id */
} tb_stat_type;

typedef struct tb_stat {
    uint32_t meta; /* stat metadata id (the stat's name) */
    uint32_t type; /* tb_stat_type */
    union {
        int64_t i;
        uint64_t u;
        double d;
        uint32_t ref;
    } v;
} tb_stat;

typedef struct tb_event {
    int64_t start_ns; /* Unix-epoch ns */
    int64_t dur_ns;
    uint32_t meta;   /* event metadata id (the event's name) */
    uint32_t nstats; /* stats at line->stats[stats_at .. stats_at+nstats) */
    uint64_t stats_at;
} tb_event;

/* Trace-JSON category of an event name (Kineto's names); not in xplane. */
typedef enum tb_category {
    TB_CAT_NONE = 0,
    TB_CAT_KERNEL,        /* "kernel" */
    TB_CAT_MEMCPY,        /* "gpu_memcpy" */
    TB_CAT_MEMSET,        /* "gpu_memset" */
    TB_CAT_CUDA_RUNTIME,  /* "cuda_runtime" */
    TB_CAT_CUDA_DRIVER,   /* "cuda_driver" */
    TB_CAT_CUDA_SYNC,     /* "cuda_sync" */
    TB_CAT_GPU_USER,      /* "gpu_user_annotation" (NVTX on GPU) */
    TB_CAT_USER,          /* "user_annotation" (NVTX / API ranges on host) */
    TB_CAT_STEP,          /* "step" (step markers) */
    TB_CAT_CPU_SAMPLE,    /* "cpu_sample" (merged CPU sample spans) */
    TB_CAT_GPU_MEMORY,    /* "gpu_memory" (alloc/free) */
    TB_CAT_OVERHEAD,      /* "overhead" (CUPTI / tbprof overhead) */
    TB_CAT_COUNT
} tb_category;

const char *tb_category_name(tb_category c);

typedef struct tb_line {
    int64_t id;
    char *name;
    char *display_name; /* may be NULL */
    tb_event *events;
    size_t nevents, cap_events;
    tb_stat *stats;
    size_t nstats, cap_stats;
    struct tb_plane *plane;
} tb_line;

typedef struct tb_meta {
    char *name;
    char *display_name; /* may be NULL */
    uint32_t category;  /* tb_category */
    uint32_t next_cat;  /* the metadata of this name in another category; 0: none */
} tb_meta;

typedef struct tb_plane {
    int64_t id;
    char *name;
    tb_line **lines;
    size_t nlines, cap_lines;
    /* event metadata: id i is events_meta[i] (index 0 unused) */
    tb_meta *event_meta;
    size_t nevent_meta, cap_event_meta;
    /* stat metadata (stat names and interned string values) */
    char **stat_meta;
    size_t nstat_meta, cap_stat_meta;
    /* plane-level stats */
    tb_stat *stats;
    size_t nstats, cap_stats;
    /* hash indexes for interning (open addressing; private) */
    struct tb_intern *ev_index, *st_index;
    struct tb_space *space;
} tb_plane;

typedef struct tb_space {
    tb_plane **planes;
    size_t nplanes, cap_planes;
    char **hostnames, **warnings, **errors;
    size_t nhostnames, nwarnings, nerrors;
    size_t limit_bytes; /* 0: unlimited */
    size_t used_bytes;
    uint64_t dropped; /* events refused by the limit or by allocation failure */
} tb_space;

tb_space *tb_space_new(void);
void tb_space_free(tb_space *s);
/* Cap on event+stat bytes; events beyond it are dropped and counted. */
void tb_space_set_limit(tb_space *s, size_t bytes);
static inline uint64_t tb_space_dropped(const tb_space *s) { return s->dropped; }

int tb_space_add_hostname(tb_space *s, const char *h);
int tb_space_add_warning(tb_space *s, const char *w);
/* A warning about this capture (printf-style, up to 511 bytes): into the
 * profile every time, on stderr once per process for each call site. */
#define tb_space_warn(s, ...)                                              \
    do {                                                                   \
        char tb_w_[512];                                                   \
        snprintf(tb_w_, sizeof(tb_w_), __VA_ARGS__);                       \
        tb_space_add_warning((s), tb_w_);                                  \
        tb_warn_once("%s", tb_w_);                                         \
    } while (0)
int tb_space_add_error(tb_space *s, const char *e);

/* Find the plane named `name`, or create it (ids 1, 2, ... in creation order).
 * Returns NULL only when out of memory. */
tb_plane *tb_space_plane(tb_space *s, const char *name);
tb_plane *tb_space_find_plane(const tb_space *s, const char *name);

/* Intern an event name; returns its metadata id (>= 1) or -ENOMEM. */
int64_t tb_plane_event_meta(tb_plane *p, const char *name);
int64_t tb_plane_event_meta_n(tb_plane *p, const char *name, size_t len);
/* The metadata of `name` in category `cat`: a name that two kinds of event
 * share (a sampled function cudaLaunchKernel and the CUDA API call, an NVTX
 * range and a Python function) gets one metadata per category, so each
 * event keeps its own. A metadata without a category is claimed. Returns
 * its id (>= 1) or -ENOMEM. */
int64_t tb_plane_event_meta_cat(tb_plane *p, const char *name, tb_category cat);
int64_t tb_plane_event_meta_cat_n(tb_plane *p, const char *name, size_t len, tb_category cat);
int tb_plane_set_event_display_name(tb_plane *p, int64_t meta, const char *display);
/* Set the category of one metadata (all events that use it): for names
 * that only one kind of event uses; else tb_plane_event_meta_cat. */
void tb_plane_set_event_category(tb_plane *p, int64_t meta, tb_category c);
/* Intern a stat name or a string value; returns its stat-metadata id. */
int64_t tb_plane_stat_meta(tb_plane *p, const char *name);
int64_t tb_plane_stat_meta_n(tb_plane *p, const char *name, size_t len);
/* The id of a stat name or string value already in the plane, without
 * adding it; 0 when absent. */
uint32_t tb_plane_find_stat_meta(const tb_plane *p, const char *name);

/* Plane-level stats (device facts, drop counts, "why is GPU data absent"). */
int tb_plane_stat_i64(tb_plane *p, const char *name, int64_t v);
int tb_plane_stat_u64(tb_plane *p, const char *name, uint64_t v);
int tb_plane_stat_f64(tb_plane *p, const char *name, double v);
int tb_plane_stat_str(tb_plane *p, const char *name, const char *v);

/* Find the line with this id, or create it with `name`. NULL on ENOMEM. */
tb_line *tb_plane_line(tb_plane *p, int64_t id, const char *name);
tb_line *tb_plane_find_line(const tb_plane *p, int64_t id);
int tb_line_set_display_name(tb_line *l, const char *display);

/* Append an event; returns its index in l->events, or -ENOSPC (space limit,
 * counted as dropped) / -ENOMEM. Stats added next go to this event. */
int64_t tb_line_add(tb_line *l, int64_t meta, int64_t start_ns, int64_t dur_ns);
/* Add a stat to the line's LAST event. stat_meta is a tb_plane_stat_meta id. */
int tb_line_stat_i64(tb_line *l, int64_t stat_meta, int64_t v);
int tb_line_stat_u64(tb_line *l, int64_t stat_meta, uint64_t v);
int tb_line_stat_f64(tb_line *l, int64_t stat_meta, double v);
/* String stat: the value is interned in the plane and written as ref_value. */
int tb_line_stat_str(tb_line *l, int64_t stat_meta, const char *v);

/* Add stats to events already in the line: events[ev[i]] gets add[i], ev
 * in increasing order (an index repeated gives that event several stats,
 * in the order given). The stats move up in place when the
 * events' stat blocks lie in event order (events appended in time order),
 * else the pool is rebuilt once in event order; either way tb_line_stat_*
 * still append to the last event. O(events + stats). 0; -ENOSPC (space
 * limit), -ENOMEM or -EINVAL (an index out of range or out of order):
 * nothing added. */
int tb_line_add_stats(tb_line *l, const uint32_t *ev, const tb_stat *add, size_t n);

/* An event's e->nstats stats; NULL on a line without any (NULL + 0 is
 * undefined in C). */
static inline const tb_stat *tb_event_stats(const tb_line *l, const tb_event *e)
{
    return l->stats ? l->stats + e->stats_at : NULL;
}
/* Name of event/stat metadata, "" for an unknown id. */
const char *tb_plane_event_name(const tb_plane *p, int64_t meta);
const char *tb_plane_stat_name(const tb_plane *p, int64_t meta);
/* The stat with metadata id `id` on an event; NULL when absent (or id is 0). */
static inline const tb_stat *tb_event_stat(const tb_line *l, const tb_event *e, uint32_t id)
{
    const tb_stat *st = tb_event_stats(l, e);
    for (uint32_t i = 0; id && i < e->nstats; i++)
        if (st[i].meta == id)
            return &st[i];
    return NULL;
}
/* Find a stat by name on an event; NULL when absent. */
const tb_stat *tb_event_find_stat(const tb_plane *p, const tb_line *l, const tb_event *e,
                                  const char *name);
/* A plane-level stat by name; NULL when absent. */
const tb_stat *tb_plane_find_stat(const tb_plane *p, const char *name);
/* Whether any event metadata of the plane has category `cat`. */
int tb_plane_has_category(const tb_plane *p, tb_category cat);

/* Sort each line's events by start time (ties: longer first, so parents
 * precede children). Stable; O(n log n). Writers call it. 0, or -ENOMEM
 * when a line could not be sorted (it is left as it was: writers must not
 * write it, offsets from its first event would be negative). */
int tb_space_sort(tb_space *s);

/* Earliest start and latest end over all events; 0/0 when empty. */
void tb_space_span(const tb_space *s, int64_t *begin_ns, int64_t *end_ns);
size_t tb_space_event_count(const tb_space *s);

#ifdef __cplusplus
}
#endif
#endif
