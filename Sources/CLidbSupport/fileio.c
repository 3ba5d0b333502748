// File-to-file copies inside the kernel and early writeback, for the atomic writers.
#define _GNU_SOURCE
#include "lidb_support.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

int64_t lidb_copy_file_range(int in_fd, int64_t *in_offset, int out_fd, size_t length) {
#if defined(__linux__) && defined(SYS_copy_file_range)
    int64_t off = *in_offset;
    ssize_t n = syscall(SYS_copy_file_range, in_fd, &off, out_fd, (int64_t *)0, length, 0u);
    if (n > 0) *in_offset = (int64_t)off;
    return (int64_t)n;
#else
    (void)in_fd; (void)in_offset; (void)out_fd; (void)length;
    errno = ENOSYS;
    return -1;
#endif
}

int lidb_start_writeback(int fd, int64_t offset, int64_t length) {
#if defined(__linux__)
    return sync_file_range(fd, (off_t)offset, (off_t)length, SYNC_FILE_RANGE_WRITE);
#else
    (void)fd; (void)offset; (void)length;
    return 0;
#endif
}
