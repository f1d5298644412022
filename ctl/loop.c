/* SPDX-License-Identifier: MIT */
/* acsd's event loop: epoll for fds, a binary heap of monotonic timers, signalfd, child reaping. */
#include "loop.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "acs/util.h"
#include "list.h"

#define LOOP_MAX_EVENTS 64

struct acs_loop_io {
        acs_loop *loop;
        int fd;
        unsigned events;
        bool dead;            /* freed by the user; memory released after the round */
        acs_loop_io_fn fn;
        void *userdata;
        acs_loop_io *next_dead;
};

struct acs_loop_timer {
        acs_loop *loop;
        uint64_t due;         /* 0 = disarmed */
        uint64_t interval;
        size_t heap_idx;      /* valid while armed */
        acs_loop_timer_fn fn;
        void *userdata;
};

struct acs_loop_child {
        acs_loop *loop;
        pid_t pid;
        acs_loop_child_fn fn;
        void *userdata;
        acs_loop_child *prev, *next;
};

struct acs_loop {
        int epfd;
        bool quit;
        int quit_code;
        bool dispatching;
        acs_loop_io *dead_ios;        /* freed during a round, released after it */

        acs_loop_timer **heap;        /* min-heap on due */
        size_t n_heap, cap_heap;
        /* every timer ever added and not freed, so acs_loop_free can release them */
        acs_loop_timer **timers;
        size_t n_timers, cap_timers;

        /* every io watch not freed (for acs_loop_free) */
        acs_loop_io **ios;
        size_t n_ios, cap_ios;

        int sigfd;
        acs_loop_io *sig_io;
        acs_loop_signal_fn sig_fn;
        void *sig_userdata;
        sigset_t old_mask;
        struct sigaction old_pipe;

        acs_loop_child *children;
        bool reap_pending;
};

static const int loop_signals[] = { SIGTERM, SIGINT, SIGHUP, SIGCHLD };

uint64_t acs_loop_now(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int acs_loop_new(acs_loop **ret)
{
        acs_loop *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->sigfd = -1;
        l->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (l->epfd < 0) {
                int r = -errno;
                free(l);
                return r;
        }
        *ret = l;
        return 0;
}

/* ---- registry of handles (so acs_loop_free can release them) ---- */

static int registry_add(void ***v, size_t *n, size_t *cap, void *p)
{
        int r = acs_grow((void **)v, cap, *n, sizeof(void *), 16);
        if (r < 0)
                return r;
        (*v)[(*n)++] = p;
        return 0;
}

static void registry_remove(void **v, size_t *n, void *p)
{
        for (size_t i = *n; i-- > 0;)
                if (v[i] == p) {
                        v[i] = v[--*n];
                        return;
                }
}

/* A zeroed handle of size bytes, registered in v; NULL when out of memory. */
static void *registry_new(void ***v, size_t *n, size_t *cap, size_t size)
{
        void *p = calloc(1, size);
        if (p && registry_add(v, n, cap, p) < 0)
                p = acs_free(p);
        return p;
}

/* Unregisters and frees a handle of registry_new. */
static void registry_free(void **v, size_t *n, void *p)
{
        registry_remove(v, n, p);
        free(p);
}

/* ---- fd watches ---- */

static uint32_t epoll_bits(unsigned events)
{
        return (events & ACS_LOOP_IN ? EPOLLIN | EPOLLRDHUP : 0) | (events & ACS_LOOP_OUT ? EPOLLOUT : 0);
}

int acs_loop_io_add(acs_loop *l, int fd, unsigned events, acs_loop_io_fn fn, void *userdata,
                    acs_loop_io **ret)
{
        if (!l || fd < 0 || !fn)
                return -EINVAL;
        acs_loop_io *io = registry_new((void ***)&l->ios, &l->n_ios, &l->cap_ios, sizeof(*io));
        if (!io)
                return -ENOMEM;
        *io = (acs_loop_io){ .loop = l, .fd = fd, .events = events, .fn = fn, .userdata = userdata };
        struct epoll_event ev = { .events = epoll_bits(events), .data.ptr = io };
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                int r = -errno;
                registry_free((void **)l->ios, &l->n_ios, io);
                return r;
        }
        if (ret)
                *ret = io;
        return 0;
}

int acs_loop_io_set(acs_loop_io *io, unsigned events)
{
        if (!io || io->dead)
                return -EINVAL;
        if (events == io->events)
                return 0;
        struct epoll_event ev = { .events = epoll_bits(events), .data.ptr = io };
        if (epoll_ctl(io->loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0)
                return -errno;
        io->events = events;
        return 0;
}

unsigned acs_loop_io_events(const acs_loop_io *io) { return io->events; }
int acs_loop_io_fd(const acs_loop_io *io) { return io->fd; }

acs_loop_io *acs_loop_io_free(acs_loop_io *io)
{
        if (!io || io->dead)
                return NULL;
        acs_loop *l = io->loop;
        /* ENOENT/EBADF: the caller closed the fd first; the kernel dropped it already. */
        (void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
        registry_remove((void **)l->ios, &l->n_ios, io);
        if (l->dispatching) {
                io->dead = true;
                io->next_dead = l->dead_ios;
                l->dead_ios = io;
        } else {
                free(io);
        }
        return NULL;
}

static void release_dead_ios(acs_loop *l)
{
        while (l->dead_ios) {
                acs_loop_io *io = l->dead_ios;
                l->dead_ios = io->next_dead;
                free(io);
        }
}

/* ---- timers (binary min-heap on due) ---- */

static bool heap_less(acs_loop *l, size_t a, size_t b) { return l->heap[a]->due < l->heap[b]->due; }

static void heap_swap(acs_loop *l, size_t a, size_t b)
{
        acs_loop_timer *t = l->heap[a];
        l->heap[a] = l->heap[b];
        l->heap[b] = t;
        l->heap[a]->heap_idx = a;
        l->heap[b]->heap_idx = b;
}

static void heap_up(acs_loop *l, size_t i)
{
        while (i > 0) {
                size_t p = (i - 1) / 2;
                if (!heap_less(l, i, p))
                        break;
                heap_swap(l, i, p);
                i = p;
        }
}

static void heap_down(acs_loop *l, size_t i)
{
        for (;;) {
                size_t c = 2 * i + 1, m = i;
                if (c < l->n_heap && heap_less(l, c, m))
                        m = c;
                if (c + 1 < l->n_heap && heap_less(l, c + 1, m))
                        m = c + 1;
                if (m == i)
                        return;
                heap_swap(l, i, m);
                i = m;
        }
}

static void heap_remove(acs_loop *l, acs_loop_timer *t)
{
        size_t i = t->heap_idx;
        size_t last = --l->n_heap;
        if (i != last) {
                heap_swap(l, i, last);
                heap_down(l, i);
                heap_up(l, i);
        }
        t->due = 0;
}

int acs_loop_timer_add(acs_loop *l, uint64_t after_usec, uint64_t interval_usec,
                       acs_loop_timer_fn fn, void *userdata, acs_loop_timer **ret)
{
        if (!l || !fn)
                return -EINVAL;
        acs_loop_timer *t = registry_new((void ***)&l->timers, &l->n_timers, &l->cap_timers, sizeof(*t));
        if (!t)
                return -ENOMEM;
        *t = (acs_loop_timer){ .loop = l, .fn = fn, .userdata = userdata };
        int r = acs_loop_timer_arm(t, after_usec, interval_usec);
        if (r < 0) {
                registry_free((void **)l->timers, &l->n_timers, t);
                return r;
        }
        if (ret)
                *ret = t;
        return 0;
}

int acs_loop_timer_arm(acs_loop_timer *t, uint64_t after_usec, uint64_t interval_usec)
{
        acs_loop *l = t->loop;
        if (t->due == 0) {
                int r = ACS_GROW(l->heap, l->cap_heap, l->n_heap, 16);
                if (r < 0)
                        return r;
                t->heap_idx = l->n_heap;
                l->heap[l->n_heap++] = t;
        }
        t->due = acs_loop_now() + after_usec;
        if (t->due == 0)
                t->due = 1;
        t->interval = interval_usec;
        heap_down(l, t->heap_idx);
        heap_up(l, t->heap_idx);
        return 0;
}

void acs_loop_timer_disarm(acs_loop_timer *t)
{
        if (t && t->due)
                heap_remove(t->loop, t);
}

bool acs_loop_timer_armed(const acs_loop_timer *t) { return t && t->due != 0; }
uint64_t acs_loop_timer_due(const acs_loop_timer *t) { return t ? t->due : 0; }

acs_loop_timer *acs_loop_timer_free(acs_loop_timer *t)
{
        if (!t)
                return NULL;
        acs_loop_timer_disarm(t);
        registry_free((void **)t->loop->timers, &t->loop->n_timers, t);
        return NULL;
}

/* Fires every timer due by now (taken once: a timer re-armed for now waits a round). */
static void run_timers(acs_loop *l)
{
        uint64_t now = acs_loop_now();
        while (l->n_heap > 0 && l->heap[0]->due <= now && !l->quit) {
                acs_loop_timer *t = l->heap[0];
                if (t->interval) {
                        uint64_t next = t->due + t->interval;
                        t->due = next > now ? next : now + t->interval;
                        heap_down(l, 0);
                } else {
                        heap_remove(l, t);
                }
                t->fn(t, t->userdata); /* may free t */
        }
}

/* Milliseconds until the first timer (rounded up), -1 if none. */
static int timer_timeout(acs_loop *l)
{
        if (l->n_heap == 0)
                return -1;
        uint64_t now = acs_loop_now(), due = l->heap[0]->due;
        if (due <= now)
                return 0;
        uint64_t ms = (due - now + 999) / 1000;
        return ms > 3600000 ? 3600000 : (int)ms;
}

/* ---- signals and children ---- */

static void reap_children(acs_loop *l)
{
        l->reap_pending = false;
        for (acs_loop_child *c = l->children, *next; c; c = next) {
                next = c->next;
                int status;
                pid_t r = waitpid(c->pid, &status, WNOHANG);
                if (r == 0 || (r < 0 && errno == EINTR))
                        continue;
                if (r < 0)
                        status = 0x7f00; /* ECHILD: someone else reaped it; report "exit 127" */
                acs_loop_child_fn fn = c->fn;
                void *ud = c->userdata;
                pid_t pid = c->pid;
                acs_loop_child_free(c);
                fn(pid, status, ud); /* may free other children: restart the scan */
                next = l->children;
        }
}

static void on_signal(acs_loop_io *io, int fd, unsigned events, void *userdata)
{
        acs_loop *l = userdata;
        struct signalfd_siginfo si[8];
        ssize_t n = read(fd, si, sizeof(si));
        if (n <= 0)
                return;
        for (size_t i = 0; i < (size_t)n / sizeof(si[0]); i++) {
                if (si[i].ssi_signo == SIGCHLD)
                        reap_children(l);
                if (l->sig_fn)
                        l->sig_fn(l, &si[i], l->sig_userdata);
        }
}

int acs_loop_signals(acs_loop *l, acs_loop_signal_fn fn, void *userdata)
{
        if (l->sigfd >= 0)
                return -EALREADY;
        sigset_t set;
        sigemptyset(&set);
        for (size_t i = 0; i < ACS_ARRAY_SIZE(loop_signals); i++)
                sigaddset(&set, loop_signals[i]);
        if (sigprocmask(SIG_BLOCK, &set, &l->old_mask) < 0)
                return -errno;
        int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
        if (fd < 0) {
                int r = -errno;
                sigprocmask(SIG_SETMASK, &l->old_mask, NULL);
                return r;
        }
        l->sigfd = fd;
        l->sig_fn = fn;
        l->sig_userdata = userdata;
        int r = acs_loop_io_add(l, fd, ACS_LOOP_IN, on_signal, l, &l->sig_io);
        if (r < 0) {
                close(fd);
                l->sigfd = -1;
                sigprocmask(SIG_SETMASK, &l->old_mask, NULL);
                return r;
        }
        struct sigaction ign = { .sa_handler = SIG_IGN };
        sigaction(SIGPIPE, &ign, &l->old_pipe);
        /* a child that exited before we watched is found by the first round */
        l->reap_pending = true;
        return 0;
}

void acs_loop_child_reset(void)
{
        sigset_t none;
        sigemptyset(&none);
        struct sigaction dfl = { .sa_handler = SIG_DFL };
        sigaction(SIGPIPE, &dfl, NULL);
        for (size_t i = 0; i < ACS_ARRAY_SIZE(loop_signals); i++)
                sigaction(loop_signals[i], &dfl, NULL);
        sigprocmask(SIG_SETMASK, &none, NULL);
}

int acs_loop_child_add(acs_loop *l, pid_t pid, acs_loop_child_fn fn, void *userdata,
                       acs_loop_child **ret)
{
        if (!l || pid <= 0 || !fn)
                return -EINVAL;
        acs_loop_child *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *c = (acs_loop_child){ .loop = l, .pid = pid, .fn = fn, .userdata = userdata };
        ACS_LIST_PREPEND(l->children, c);
        l->reap_pending = true;
        if (ret)
                *ret = c;
        return 0;
}

acs_loop_child *acs_loop_child_free(acs_loop_child *c)
{
        if (!c)
                return NULL;
        ACS_LIST_REMOVE(c->loop->children, c);
        free(c);
        return NULL;
}

/* ---- running ---- */

int acs_loop_run_once(acs_loop *l, int timeout_ms)
{
        struct epoll_event ev[LOOP_MAX_EVENTS];
        int t = timer_timeout(l);
        if (l->reap_pending)
                t = 0;
        if (t < 0 || (timeout_ms >= 0 && timeout_ms < t))
                t = timeout_ms;
        int n = epoll_wait(l->epfd, ev, LOOP_MAX_EVENTS, t);
        if (n < 0) {
                if (errno == EINTR)
                        return 0;
                return -errno;
        }
        l->dispatching = true;
        for (int i = 0; i < n && !l->quit; i++) {
                acs_loop_io *io = ev[i].data.ptr;
                if (io->dead)
                        continue;
                unsigned e = 0;
                if (ev[i].events & (EPOLLIN | EPOLLRDHUP))
                        e |= ACS_LOOP_IN;
                if (ev[i].events & EPOLLOUT)
                        e |= ACS_LOOP_OUT;
                if (ev[i].events & (EPOLLERR | EPOLLHUP))
                        e |= ACS_LOOP_ERR;
                io->fn(io, io->fd, e, io->userdata);
        }
        if (l->reap_pending && !l->quit)
                reap_children(l);
        if (!l->quit)
                run_timers(l);
        l->dispatching = false;
        release_dead_ios(l);
        return 0;
}

int acs_loop_run(acs_loop *l)
{
        l->quit = false;
        while (!l->quit) {
                int r = acs_loop_run_once(l, -1);
                if (r < 0)
                        return r;
        }
        return l->quit_code;
}

void acs_loop_quit(acs_loop *l, int code)
{
        l->quit = true;
        l->quit_code = code;
}

acs_loop *acs_loop_free(acs_loop *l)
{
        if (!l)
                return NULL;
        if (l->sigfd >= 0) {
                l->sig_io = acs_loop_io_free(l->sig_io);
                close(l->sigfd);
                sigaction(SIGPIPE, &l->old_pipe, NULL);
                sigprocmask(SIG_SETMASK, &l->old_mask, NULL);
        }
        l->dispatching = false;
        while (l->n_ios > 0)
                acs_loop_io_free(l->ios[l->n_ios - 1]);
        release_dead_ios(l);
        while (l->n_timers > 0)
                acs_loop_timer_free(l->timers[l->n_timers - 1]);
        while (l->children)
                acs_loop_child_free(l->children);
        free(l->ios);
        free(l->timers);
        free(l->heap);
        close(l->epfd);
        free(l);
        return NULL;
}
