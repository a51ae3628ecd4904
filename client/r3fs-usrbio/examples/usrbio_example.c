/* Writes a file of an r3fs mount through a USRBIO ring and reads it back, checking every byte.
 *
 *   cc -I client/r3fs-usrbio/include usrbio_example.c -L target/debug -lr3fs_usrbio
 *   ./a.out <mount> <file on the mount>
 *
 * Walk-through: docs/usrbio.md.
 */
#include "r3fs_usrbio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(sizeof(struct r3fs_cqe) == 16, "r3fs_cqe is { int64_t, uint64_t }");

#define DATA_BYTES ((1u << 20) + 123) /* not a multiple of the I/O size */
#define IO_BYTES (64u << 10)
#define FILE_OFFSET 4103u             /* unaligned */
#define ENTRIES 32                    /* ring size: a power of two */

static int fail(const char *what, int rc) {
    fprintf(stderr, "%s: %s\n", what, strerror(-rc));
    return 1;
}

/* Prepares one I/O per piece of [0, DATA_BYTES) of `buf`, submits them, waits for all. */
static int move_all(struct r3fs_ior *ior, struct r3fs_iov *iov, uint8_t *buf, int fd, bool read) {
    unsigned pieces = (DATA_BYTES + IO_BYTES - 1) / IO_BYTES;
    unsigned done = 0, next = 0;
    struct r3fs_cqe cqes[ENTRIES];
    while (done < pieces) {
        /* Keep the ring full: prep until it says -EAGAIN or everything is prepared. */
        while (next < pieces) {
            uint64_t at = (uint64_t)next * IO_BYTES;
            uint64_t len = DATA_BYTES - at < IO_BYTES ? DATA_BYTES - at : IO_BYTES;
            int rc = r3fs_prep_io(ior, iov, read, buf + at, fd, FILE_OFFSET + at, len, next);
            if (rc == -EAGAIN) break;
            if (rc < 0) return fail("r3fs_prep_io", rc);
            next++;
        }
        int rc = r3fs_submit_ios(ior);
        if (rc < 0) return fail("r3fs_submit_ios", rc);
        int n = r3fs_wait_for_ios(ior, cqes, ENTRIES, 1, -1);
        if (n < 0) return fail("r3fs_wait_for_ios", n);
        for (int i = 0; i < n; i++) {
            uint64_t at = cqes[i].userdata * IO_BYTES;
            int64_t expected = DATA_BYTES - at < IO_BYTES ? DATA_BYTES - at : IO_BYTES;
            if (cqes[i].result != expected) {
                fprintf(stderr, "piece %llu: result %lld, expected %lld\n",
                        (unsigned long long)cqes[i].userdata, (long long)cqes[i].result,
                        (long long)expected);
                return 1;
            }
        }
        done += (unsigned)n;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <mount> <file on the mount>\n", argv[0]);
        return 2;
    }
    const char *mount = argv[1];
    int fd = open(argv[2], O_RDWR);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    struct r3fs_iov *iov = NULL;
    struct r3fs_ior *ior = NULL;
    int rc = r3fs_iovcreate(&iov, mount, 2 * (size_t)DATA_BYTES);
    if (rc < 0) return fail("r3fs_iovcreate", rc);
    rc = r3fs_iorcreate(&ior, mount, ENTRIES);
    if (rc < 0) return fail("r3fs_iorcreate", rc);
    rc = r3fs_reg_fd(fd, 0);
    if (rc < 0) return fail("r3fs_reg_fd", rc);

    uint8_t *out = r3fs_iov_base(iov);
    uint8_t *in = out + DATA_BYTES;
    for (size_t i = 0; i < DATA_BYTES; i++) out[i] = (uint8_t)((i * 131u + 17u) % 253u);
    memset(in, 0xEE, DATA_BYTES);

    if (move_all(ior, iov, out, fd, false)) return 1; /* write */
    /* Make the writes durable and the length visible to every client. */
    rc = r3fs_prep_fsync(ior, fd, 7);
    if (rc < 0) return fail("r3fs_prep_fsync", rc);
    r3fs_submit_ios(ior);
    struct r3fs_cqe synced;
    rc = r3fs_wait_for_ios(ior, &synced, 1, 1, -1);
    if (rc != 1 || synced.userdata != 7 || synced.result != 0)
        return fail("fsync through the ring", rc < 0 ? rc : synced.result < 0 ? (int)synced.result : -EIO);
    if (move_all(ior, iov, in, fd, true)) return 1;   /* read back */
    if (memcmp(out, in, DATA_BYTES) != 0) {
        for (size_t i = 0; i < DATA_BYTES; i++)
            if (out[i] != in[i]) {
                fprintf(stderr, "byte %zu differs: wrote %u read %u\n", i, out[i], in[i]);
                break;
            }
        return 1;
    }
    /* Bad arguments come back as negative errnos. */
    if (r3fs_prep_io(ior, iov, true, out + 2 * (size_t)DATA_BYTES, fd, 0, 1, 0) != -EFAULT)
        return fail("buffer outside the iov not refused", -EINVAL);
    if (r3fs_prep_io(ior, iov, true, out, fd + 1000, 0, 1, 0) != -EBADF)
        return fail("unregistered fd not refused", -EINVAL);
    if (r3fs_prep_fsync(ior, fd + 1000, 0) != -EBADF)
        return fail("fsync of an unregistered fd not refused", -EINVAL);

    rc = r3fs_dereg_fd(fd);
    if (rc < 0) return fail("r3fs_dereg_fd", rc);
    r3fs_iordestroy(ior);
    r3fs_iovdestroy(iov);
    close(fd);
    printf("c round trip ok: %u bytes\n", DATA_BYTES);
    return 0;
}
