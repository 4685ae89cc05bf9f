/* ehtail.c - a library whose .eh_frame_hdr ends its PT_LOAD segment
 * (ehtail.ld puts it alone in a segment of its own, 8-byte aligned), with
 * one function: the last (only) entry of the binary-search table. An
 * unwinder that reads the table in aligned 8-byte words (libunwind does)
 * reads 4 bytes past the table's end to get that entry's FDE offset. */
typedef void (*ehtail_cb)(void);
__attribute__((visibility("default"))) volatile int ehtail_sink;

__attribute__((noinline, visibility("default"))) void ehtail_call(ehtail_cb cb)
{
    cb();
    ehtail_sink++;
}
