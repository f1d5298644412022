/* SPDX-License-Identifier: MIT */
/* Tests of acsd's event loop: fd watches, timer order and re-arming, freeing inside callbacks, signals, children. */
#include "loop.h"

#include <errno.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

struct rec {
        int order[16];
        int n;
        acs_loop *loop;
        acs_loop_timer *other;
};

static void on_timer(acs_loop_timer *t, void *ud)
{
        struct rec *r = ud;
        (void)t;
        if (r->n < 16)
                r->order[r->n] = (int)acs_loop_timer_due(t) /* 0: one-shot disarmed */;
        r->n++;
}

struct tagged {
        struct rec *rec;
        int tag;
};

static void on_tagged(acs_loop_timer *t, void *ud)
{
        struct tagged *tg = ud;
        if (tg->rec->n < 16)
                tg->rec->order[tg->rec->n] = tg->tag;
        tg->rec->n++;
        if (tg->tag == 3)
                acs_loop_quit(tg->rec->loop, 42);
        (void)t;
}

TEST(timers_fire_in_due_order)
{
        acs_loop *l = NULL;
        CHECK_INT(acs_loop_new(&l), 0);
        struct rec r = { .loop = l };
        struct tagged a = { &r, 1 }, b = { &r, 2 }, c = { &r, 3 };
        uint64_t t0 = acs_loop_now();
        CHECK_INT(acs_loop_timer_add(l, 30000, 0, on_tagged, &c, NULL), 0);
        CHECK_INT(acs_loop_timer_add(l, 1000, 0, on_tagged, &a, NULL), 0);
        CHECK_INT(acs_loop_timer_add(l, 15000, 0, on_tagged, &b, NULL), 0);
        CHECK_INT(acs_loop_run(l), 42);
        uint64_t dt = acs_loop_now() - t0;
        CHECK_INT(r.n, 3);
        CHECK_INT(r.order[0], 1);
        CHECK_INT(r.order[1], 2);
        CHECK_INT(r.order[2], 3);
        CHECK(dt >= 30000);
        CHECK(dt < 2000000);
        acs_loop_free(l);
}

static void on_periodic(acs_loop_timer *t, void *ud)
{
        struct rec *r = ud;
        r->n++;
        if (r->n == 5) {
                acs_loop_timer_free(t); /* freeing itself inside its callback */
                acs_loop_quit(r->loop, 0);
        }
}

TEST(periodic_timer_and_self_free)
{
        acs_loop *l = NULL;
        CHECK_INT(acs_loop_new(&l), 0);
        struct rec r = { .loop = l };
        acs_loop_timer *t;
        CHECK_INT(acs_loop_timer_add(l, 0, 2000, on_periodic, &r, &t), 0);
        uint64_t t0 = acs_loop_now();
        CHECK_INT(acs_loop_run(l), 0);
        CHECK_INT(r.n, 5);
        CHECK(acs_loop_now() - t0 >= 8000);
        acs_loop_free(l);
}

static void on_free_other(acs_loop_timer *t, void *ud)
{
        struct rec *r = ud;
        r->n++;
        r->other = acs_loop_timer_free(r->other);
        acs_loop_timer_arm(t, 5000, 0); /* re-arm a one-shot from its callback */
        if (r->n == 2)
                acs_loop_quit(r->loop, 7);
}

TEST(free_other_timer_and_rearm)
{
        acs_loop *l = NULL;
        CHECK_INT(acs_loop_new(&l), 0);
        struct rec r = { .loop = l };
        struct rec never = { 0 };
        CHECK_INT(acs_loop_timer_add(l, 1000, 0, on_free_other, &r, NULL), 0);
        CHECK_INT(acs_loop_timer_add(l, 1000, 0, on_timer, &never, &r.other), 0);
        CHECK_INT(acs_loop_run(l), 7);
        CHECK_INT(r.n, 2);
        /* same due time: the other may have fired first once, never after being freed */
        CHECK(never.n <= 1);
        acs_loop_free(l); /* frees the re-armed timer */
}

TEST(many_timers_heap)
{
        acs_loop *l = NULL;
        CHECK_INT(acs_loop_new(&l), 0);
        acs_loop_timer *t[200];
        struct rec r = { .loop = l };
        for (int i = 0; i < 200; i++)
                CHECK_INT(acs_loop_timer_add(l, (uint64_t)((i * 7919) % 200) * 100 + 100, 0, on_timer, &r, &t[i]), 0);
        /* cancel every third */
        for (int i = 0; i < 200; i += 3)
                t[i] = acs_loop_timer_free(t[i]);
        uint64_t last = 0;
        bool sorted = true;
        while (r.n < 133) {
                uint64_t before_due = UINT64_MAX;
                for (int i = 0; i < 200; i++)
                        if (t[i] && acs_loop_timer_armed(t[i]) && acs_loop_timer_due(t[i]) < before_due)
                                before_due = acs_loop_timer_due(t[i]);
                if (before_due < last)
                        sorted = false;
                last = before_due == UINT64_MAX ? last : before_due;
                CHECK_INT(acs_loop_run_once(l, 100), 0);
        }
        CHECK(sorted);
        CHECK_INT(r.n, 133);
        for (int i = 0; i < 200; i++)
                if (t[i])
                        CHECK(!acs_loop_timer_armed(t[i]));
        acs_loop_free(l);
}

struct iorec {
        acs_loop *loop;
        acs_loop_io *a, *b;
        int reads_a, reads_b;
};

static void on_io(acs_loop_io *io, int fd, unsigned events, void *ud)
{
        struct iorec *r = ud;
        char buf[16];
        if (events & ACS_LOOP_IN) {
                ssize_t n = read(fd, buf, sizeof(buf));
                (void)n;
        }
        if (io == r->a) {
                r->reads_a++;
                /* free the other watch, which is also ready in this very round */
                r->b = acs_loop_io_free(r->b);
        } else if (io == r->b) {
                r->reads_b++;
                r->a = acs_loop_io_free(r->a);
        }
        acs_loop_quit(r->loop, 1);
}

TEST(io_free_other_in_same_round)
{
        acs_loop *l = NULL;
        int p1[2], p2[2];
        CHECK_INT(acs_loop_new(&l), 0);
        CHECK_INT(pipe(p1), 0);
        CHECK_INT(pipe(p2), 0);
        struct iorec r = { .loop = l };
        CHECK_INT(acs_loop_io_add(l, p1[0], ACS_LOOP_IN, on_io, &r, &r.a), 0);
        CHECK_INT(acs_loop_io_add(l, p2[0], ACS_LOOP_IN, on_io, &r, &r.b), 0);
        CHECK_INT(acs_loop_io_add(l, p2[0], ACS_LOOP_IN, on_io, &r, NULL), -EEXIST);
        CHECK_INT(write(p1[1], "x", 1), 1);
        CHECK_INT(write(p2[1], "y", 1), 1);
        CHECK_INT(acs_loop_run(l), 1);
        CHECK_INT(r.reads_a + r.reads_b, 1); /* the other was freed before its turn */
        acs_loop_free(l);
        close(p1[0]); close(p1[1]); close(p2[0]); close(p2[1]);
}

static void on_out(acs_loop_io *io, int fd, unsigned events, void *ud)
{
        int *n = ud;
        if (events & ACS_LOOP_OUT) {
                (*n)++;
                acs_loop_io_set(io, 0);
        }
}

TEST(io_out_and_set)
{
        acs_loop *l = NULL;
        int sv[2];
        CHECK_INT(acs_loop_new(&l), 0);
        CHECK_INT(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        int n = 0;
        acs_loop_io *io;
        CHECK_INT(acs_loop_io_add(l, sv[0], ACS_LOOP_OUT, on_out, &n, &io), 0);
        for (int i = 0; i < 5; i++)
                CHECK_INT(acs_loop_run_once(l, 10), 0);
        CHECK_INT(n, 1);
        CHECK_INT(acs_loop_io_events(io), 0);
        CHECK_INT(acs_loop_io_fd(io), sv[0]);
        acs_loop_free(l);
        close(sv[0]);
        close(sv[1]);
}

struct sigrec {
        int term, chld;
        pid_t pid;
        int status;
        acs_loop *loop;
};

static void on_sig(acs_loop *l, const struct signalfd_siginfo *si, void *ud)
{
        struct sigrec *r = ud;
        if (si->ssi_signo == SIGTERM)
                r->term++;
        if (si->ssi_signo == SIGCHLD)
                r->chld++;
}

static void on_child(pid_t pid, int status, void *ud)
{
        struct sigrec *r = ud;
        r->pid = pid;
        r->status = status;
        acs_loop_quit(r->loop, 3);
}

TEST(signals_and_children)
{
        acs_loop *l = NULL;
        CHECK_INT(acs_loop_new(&l), 0);
        struct sigrec r = { .loop = l };
        CHECK_INT(acs_loop_signals(l, on_sig, &r), 0);
        CHECK_INT(acs_loop_signals(l, on_sig, &r), -EALREADY);
        CHECK_INT(kill(getpid(), SIGTERM), 0);
        CHECK_INT(acs_loop_run_once(l, 1000), 0);
        CHECK_INT(r.term, 1);

        /* a child nobody registered is not reaped by the loop */
        fflush(stdout);
        pid_t stray = fork();
        if (stray == 0)
                _exit(5);
        pid_t pid = fork();
        if (pid == 0) {
                acs_loop_child_reset();
                usleep(20000);
                _exit(9);
        }
        CHECK_INT(acs_loop_child_add(l, pid, on_child, &r, NULL), 0);
        CHECK_INT(acs_loop_run(l), 3);
        CHECK_INT(r.pid, pid);
        CHECK(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 9);
        int st = 0;
        CHECK_INT(waitpid(stray, &st, 0), stray);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 5);
        if (!WIFEXITED(st))
                printf("# stray status %#x\n", st);

        /* a child that exited before it was registered is still reported */
        fflush(stdout);
        pid = fork();
        if (pid == 0)
                _exit(4);
        usleep(50000);
        r.pid = 0;
        CHECK_INT(acs_loop_child_add(l, pid, on_child, &r, NULL), 0);
        CHECK_INT(acs_loop_run(l), 3);
        CHECK_INT(r.pid, pid);
        CHECK(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 4);
        if (!WIFEXITED(r.status))
                printf("# status %#x\n", r.status);

        /* cancelled child watch: never called, the zombie stays for its owner */
        fflush(stdout);
        pid = fork();
        if (pid == 0)
                _exit(6);
        acs_loop_child *c;
        r.pid = 0;
        CHECK_INT(acs_loop_child_add(l, pid, on_child, &r, &c), 0);
        acs_loop_child_free(c);
        for (int i = 0; i < 5; i++)
                CHECK_INT(acs_loop_run_once(l, 20), 0);
        CHECK_INT(r.pid, 0);
        CHECK_INT(waitpid(pid, &st, 0), pid);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 6);
        acs_loop_free(l);

        /* the loop's signals are unblocked again after it is freed */
        sigset_t cur;
        sigprocmask(SIG_SETMASK, NULL, &cur);
        CHECK(!sigismember(&cur, SIGTERM));
        CHECK(!sigismember(&cur, SIGCHLD));
}

TEST_MAIN()
