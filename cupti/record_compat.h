/* record_compat.h - why translate.c can read every CUPTI it may meet with
 * one set of structs.
 *
 * A job brings its own libcupti (PyTorch and JAX wheels ship one), and an
 * older libcupti fills its buffers with older versions of each activity
 * record (CUpti_ActivityKernel9 from CUDA 12.x where this header knows
 * Kernel10, and so on). translate.c casts every record to the newest struct
 * this toolkit declares; that is sound only because each field it reads
 * sits at the same offset in the versions that older CUPTIs (CUDA 11.x and
 * 12.x) write. These checks make the build fail the day a toolkit moves one.
 * Included once, by translate.c; the record size itself never matters, as
 * CUPTI steps through its buffer (cuptiActivityGetNextRecord).
 */
#ifndef TBPROF_RECORD_COMPAT_H
#define TBPROF_RECORD_COMPAT_H

#include <cupti.h>
#include <cupti_activity_deprecated.h>
#include <stddef.h>

#define TB_SAME_AT(new_t, old_t, field)                                                              \
    _Static_assert(offsetof(new_t, field) == offsetof(old_t, field),                                 \
                   #new_t "." #field " moved since " #old_t ": translate.c needs a per-version reader")

/* the fields of every device record (DEVREC) */
#define TB_SAME_DEVREC(new_t, old_t)                                                                 \
    TB_SAME_AT(new_t, old_t, start);                                                                 \
    TB_SAME_AT(new_t, old_t, end);                                                                   \
    TB_SAME_AT(new_t, old_t, correlationId);                                                         \
    TB_SAME_AT(new_t, old_t, contextId);                                                             \
    TB_SAME_AT(new_t, old_t, streamId)

#define TB_SAME_KERNEL(old_t)                                                                        \
    TB_SAME_DEVREC(CUpti_ActivityKernel10, old_t);                                                   \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, graphId);                                              \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, deviceId);                                             \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, name);                                                 \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, gridX);                                                \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, gridY);                                                \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, gridZ);                                                \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, blockX);                                               \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, blockY);                                               \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, blockZ);                                               \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, registersPerThread);                                   \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, staticSharedMemory);                                   \
    TB_SAME_AT(CUpti_ActivityKernel10, old_t, dynamicSharedMemory)
TB_SAME_KERNEL(CUpti_ActivityKernel9);
TB_SAME_KERNEL(CUpti_ActivityKernel8);
TB_SAME_KERNEL(CUpti_ActivityKernel7);

#define TB_SAME_MEMCPY(old_t)                                                                        \
    TB_SAME_DEVREC(CUpti_ActivityMemcpy6, old_t);                                                    \
    TB_SAME_AT(CUpti_ActivityMemcpy6, old_t, graphId);                                               \
    TB_SAME_AT(CUpti_ActivityMemcpy6, old_t, deviceId);                                              \
    TB_SAME_AT(CUpti_ActivityMemcpy6, old_t, bytes);                                                 \
    TB_SAME_AT(CUpti_ActivityMemcpy6, old_t, copyKind);                                              \
    TB_SAME_AT(CUpti_ActivityMemcpy6, old_t, srcKind);                                               \
    TB_SAME_AT(CUpti_ActivityMemcpy6, old_t, dstKind);                                               \
    TB_SAME_AT(CUpti_ActivityMemcpy6, old_t, flags)
TB_SAME_MEMCPY(CUpti_ActivityMemcpy5);
TB_SAME_MEMCPY(CUpti_ActivityMemcpy4);

#define TB_SAME_P2P(old_t)                                                                           \
    TB_SAME_DEVREC(CUpti_ActivityMemcpyPtoP4, old_t);                                                \
    TB_SAME_AT(CUpti_ActivityMemcpyPtoP4, old_t, graphId);                                           \
    TB_SAME_AT(CUpti_ActivityMemcpyPtoP4, old_t, srcDeviceId);                                       \
    TB_SAME_AT(CUpti_ActivityMemcpyPtoP4, old_t, dstDeviceId);                                       \
    TB_SAME_AT(CUpti_ActivityMemcpyPtoP4, old_t, bytes);                                             \
    TB_SAME_AT(CUpti_ActivityMemcpyPtoP4, old_t, srcKind);                                           \
    TB_SAME_AT(CUpti_ActivityMemcpyPtoP4, old_t, dstKind);                                           \
    TB_SAME_AT(CUpti_ActivityMemcpyPtoP4, old_t, flags)
TB_SAME_P2P(CUpti_ActivityMemcpyPtoP3);

#define TB_SAME_MEMSET(old_t)                                                                        \
    TB_SAME_DEVREC(CUpti_ActivityMemset4, old_t);                                                    \
    TB_SAME_AT(CUpti_ActivityMemset4, old_t, graphId);                                               \
    TB_SAME_AT(CUpti_ActivityMemset4, old_t, deviceId);                                              \
    TB_SAME_AT(CUpti_ActivityMemset4, old_t, bytes);                                                 \
    TB_SAME_AT(CUpti_ActivityMemset4, old_t, memoryKind);                                            \
    TB_SAME_AT(CUpti_ActivityMemset4, old_t, flags)
TB_SAME_MEMSET(CUpti_ActivityMemset3);

TB_SAME_AT(CUpti_ActivitySynchronization2, CUpti_ActivitySynchronization, start);
TB_SAME_AT(CUpti_ActivitySynchronization2, CUpti_ActivitySynchronization, end);
TB_SAME_AT(CUpti_ActivitySynchronization2, CUpti_ActivitySynchronization, type);
TB_SAME_AT(CUpti_ActivitySynchronization2, CUpti_ActivitySynchronization, contextId);
TB_SAME_AT(CUpti_ActivitySynchronization2, CUpti_ActivitySynchronization, streamId);
TB_SAME_AT(CUpti_ActivitySynchronization2, CUpti_ActivitySynchronization, correlationId);

TB_SAME_AT(CUpti_ActivityContext3, CUpti_ActivityContext2, contextId);
TB_SAME_AT(CUpti_ActivityContext3, CUpti_ActivityContext2, deviceId);

TB_SAME_AT(CUpti_ActivityMarker2, CUpti_ActivityMarker, flags);
TB_SAME_AT(CUpti_ActivityMarker2, CUpti_ActivityMarker, id);
TB_SAME_AT(CUpti_ActivityMarker2, CUpti_ActivityMarker, name);
TB_SAME_AT(CUpti_ActivityMarker2, CUpti_ActivityMarker, objectId);
TB_SAME_AT(CUpti_ActivityMarker2, CUpti_ActivityMarker, objectKind);
TB_SAME_AT(CUpti_ActivityMarker2, CUpti_ActivityMarker, timestamp);

#define TB_SAME_OVERHEAD(old_t)                                                                      \
    TB_SAME_AT(CUpti_ActivityOverhead3, old_t, start);                                               \
    TB_SAME_AT(CUpti_ActivityOverhead3, old_t, end);                                                 \
    TB_SAME_AT(CUpti_ActivityOverhead3, old_t, objectId);                                            \
    TB_SAME_AT(CUpti_ActivityOverhead3, old_t, objectKind);                                          \
    TB_SAME_AT(CUpti_ActivityOverhead3, old_t, overheadKind)
TB_SAME_OVERHEAD(CUpti_ActivityOverhead2);
TB_SAME_OVERHEAD(CUpti_ActivityOverhead);

#define TB_SAME_MEMORY(old_t)                                                                        \
    TB_SAME_AT(CUpti_ActivityMemory4, old_t, bytes);                                                 \
    TB_SAME_AT(CUpti_ActivityMemory4, old_t, contextId);                                             \
    TB_SAME_AT(CUpti_ActivityMemory4, old_t, correlationId);                                         \
    TB_SAME_AT(CUpti_ActivityMemory4, old_t, deviceId);                                              \
    TB_SAME_AT(CUpti_ActivityMemory4, old_t, memoryKind);                                            \
    TB_SAME_AT(CUpti_ActivityMemory4, old_t, memoryOperationType);                                   \
    TB_SAME_AT(CUpti_ActivityMemory4, old_t, streamId);                                              \
    TB_SAME_AT(CUpti_ActivityMemory4, old_t, timestamp)
TB_SAME_MEMORY(CUpti_ActivityMemory3);
TB_SAME_MEMORY(CUpti_ActivityMemory2);

#define TB_SAME_DEVICE(old_t)                                                                        \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, id);                                                    \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, name);                                                  \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, computeCapabilityMajor);                                \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, computeCapabilityMinor);                                \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, coreClockRate);                                         \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, globalMemoryBandwidth);                                 \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, globalMemorySize);                                      \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, numMultiprocessors);                                    \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, numThreadsPerWarp);                                     \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, maxBlocksPerMultiprocessor);                            \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, maxRegistersPerMultiprocessor);                         \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, maxSharedMemoryPerMultiprocessor);                      \
    TB_SAME_AT(CUpti_ActivityDevice5, old_t, maxWarpsPerMultiprocessor)
TB_SAME_DEVICE(CUpti_ActivityDevice4);
TB_SAME_DEVICE(CUpti_ActivityDevice3);

#endif
