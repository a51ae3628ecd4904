/* r3fs USRBIO: zero-copy I/O rings between an application and the FUSE daemon of an r3fs mount.
 *
 * Link with libr3fs_usrbio.so (or libr3fs_usrbio.a plus -lpthread -ldl -lm).
 * Every function returning int returns 0 or a count on success and a negative errno on failure.
 * Reference: docs/usrbio.md. This header is checked against the library's exports by a test
 * (client/r3fs-usrbio/tests/header.rs).
 */
#ifndef R3FS_USRBIO_H
#define R3FS_USRBIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A shared data buffer (opaque). */
struct r3fs_iov;
/* A submission/completion ring (opaque). Use one ring from one thread at a time. */
struct r3fs_ior;

/* One completion. */
struct r3fs_cqe {
    int64_t result;    /* bytes transferred (a read stops at the end of the file), or -errno */
    uint64_t userdata; /* as given to r3fs_prep_io */
};

/* Creates a shared buffer of `size` bytes for I/O with the server of `mount` (any path on the
 * mount, or the server's socket). */
int r3fs_iovcreate(struct r3fs_iov **iov, const char *mount, size_t size);
/* Destroys a buffer (null is ignored). I/O still in flight into it finishes harmlessly. */
void r3fs_iovdestroy(struct r3fs_iov *iov);
/* The buffer's first byte and its size. */
uint8_t *r3fs_iov_base(const struct r3fs_iov *iov);
size_t r3fs_iov_size(const struct r3fs_iov *iov);

/* Creates a ring of `entries` (a power of two, at most 4096): at most that many I/Os may be
 * prepared, in flight or completed-but-unreaped at once. */
int r3fs_iorcreate(struct r3fs_ior **ior, const char *mount, int entries);
/* Destroys a ring after its in-flight I/O has finished (null is ignored). */
void r3fs_iordestroy(struct r3fs_ior *ior);

/* Registers `fd`, a file opened on an r3fs mount; its access mode bounds the I/O allowed.
 * `flags` must be 0. -EEXIST if already registered. */
int r3fs_reg_fd(int fd, uint64_t flags);
/* Deregisters `fd` (before closing it); in-flight I/O on it finishes first and the written length
 * is reported. -EBADF if it was not registered. */
int r3fs_dereg_fd(int fd);

/* Prepares one I/O of `len` bytes between `ptr` (inside `iov`) and registered file `fd` at file
 * offset `off`; `read` moves file -> buffer. Returns the I/O's position in the batch, or
 * -EINVAL (zero length, an iov of another mount), -EFAULT (buffer outside the iov), -EBADF (fd
 * not registered), -EAGAIN (ring full: reap completions first). */
int r3fs_prep_io(struct r3fs_ior *ior, const struct r3fs_iov *iov, bool read, void *ptr, int fd,
                 uint64_t off, uint64_t len, uint64_t userdata);
/* Prepares an fsync of registered file `fd`. Its completion (result 0) means every write to the
 * file whose completion was reaped before the fsync was submitted is durable and the file's
 * length covers it for every client (and for stat through the mount). It also waits for the
 * file's I/O already running in the server; I/O of the same batch may run before or after it.
 * Returns its position in the batch, or -EBADF (fd not registered), -EAGAIN (ring full). */
int r3fs_prep_fsync(struct r3fs_ior *ior, int fd, uint64_t userdata);
/* Hands every prepared I/O to the server with one wake-up; returns how many. */
int r3fs_submit_ios(struct r3fs_ior *ior);
/* Waits until at least `min_results` completions (clamped to the I/Os in flight and to `cqec`)
 * have arrived or `timeout_ms` passed (negative: no limit); stores up to `cqec` of them in `cqes`
 * and returns how many. -ECONNRESET if the server went away. */
int r3fs_wait_for_ios(struct r3fs_ior *ior, struct r3fs_cqe *cqes, int cqec, int min_results,
                      int timeout_ms);

#ifdef __cplusplus
}
#endif

#endif /* R3FS_USRBIO_H */
