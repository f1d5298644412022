/* SPDX-License-Identifier: MIT */
/* Small helpers every acs program uses: cleanup attributes, ownership moves, arrays. */
#pragma once

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define ACS_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline void acs_freep(void *p) { free(*(void **)p); }
static inline void acs_closep(int *fd) { if (*fd >= 0) close(*fd); }

/* Locals freed (or closed) when they go out of scope. */
#define _cleanup_free_ __attribute__((cleanup(acs_freep)))
#define _cleanup_close_ __attribute__((cleanup(acs_closep)))

/* Take ownership of a pointer out of a cleanup variable, leaving NULL behind. */
#define TAKE_PTR(p) ({ __typeof__(p) _p = (p); (p) = NULL; _p; })
#define TAKE_FD(fd) ({ int _fd = (fd); (fd) = -1; _fd; })

/* free() that leaves NULL behind: p = acs_free(p). */
static inline void *acs_free(void *p) { free(p); return NULL; }

/*
 * Makes room for one more element in a growable array of n used and *cap allocated
 * elements of elem_size bytes: when n == *cap, doubles the allocation (initial when empty).
 * Returns 0, or -ENOMEM with *v and *cap unchanged. Use ACS_GROW.
 */
static inline int acs_grow(void **v, size_t *cap, size_t n, size_t elem_size, size_t initial)
{
        if (n < *cap)
                return 0;
        size_t c = *cap ? *cap * 2 : initial;
        if (c <= *cap || c > SIZE_MAX / elem_size)
                return -ENOMEM;
        void *nv = realloc(*v, c * elem_size);
        if (!nv)
                return -ENOMEM;
        *v = nv;
        *cap = c;
        return 0;
}
#define ACS_GROW(v, cap, n, initial) acs_grow((void **)&(v), &(cap), (n), sizeof(*(v)), (initial))

#define ACS_NORETURN __attribute__((noreturn))
#define ACS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define ACS_UNUSED __attribute__((unused))
