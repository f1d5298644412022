/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/log.c: stderr format, filtering, levels, journald choice and fields. */
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "acs/log.h"
#include "acs/util.h"

/* ---- capturing stderr through a pipe ---- */

struct capture {
        int saved;
        int rfd;
};

static void capture_start(struct capture *c)
{
        int p[2];

        fflush(stderr);
        if (pipe2(p, O_CLOEXEC) < 0 || (c->saved = dup(STDERR_FILENO)) < 0 ||
            dup2(p[1], STDERR_FILENO) < 0) {
                printf("#   capture: %s\n", strerror(errno));
                abort();
        }
        close(p[1]);
        c->rfd = p[0];
}

/* Restores stderr and returns everything written meanwhile (malloc'd). */
static char *capture_end(struct capture *c)
{
        size_t len = 0, size = 4096;
        char *buf = malloc(size);
        ssize_t n;

        if (!buf || dup2(c->saved, STDERR_FILENO) < 0)
                abort();
        close(c->saved);
        while ((n = read(c->rfd, buf + len, size - len - 1)) > 0) {
                len += (size_t)n;
                if (size - len < 2) {
                        size *= 2;
                        buf = realloc(buf, size);
                        if (!buf)
                                abort();
                }
        }
        buf[len] = '\0';
        close(c->rfd);
        return buf;
}

/* ---- levels ---- */

TEST(parse_level)
{
        static const struct { const char *s; int prio; } good[] = {
                { "debug", LOG_DEBUG }, { "info", LOG_INFO }, { "notice", LOG_NOTICE },
                { "warning", LOG_WARNING }, { "err", LOG_ERR },
        };
        static const char *const bad[] = {
                "", "DEBUG", "Info", "error", "warn", "crit", "alert", "emerg", "7", "debug ",
                " info", "notice\n", "errr",
        };

        for (size_t i = 0; i < ACS_ARRAY_SIZE(good); i++) {
                int prio = -1;
                CHECK_INT(acs_log_parse_level(good[i].s, &prio), 0);
                CHECK_INT(prio, good[i].prio);
        }
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad); i++) {
                int prio = 12345;
                CHECK_INT(acs_log_parse_level(bad[i], &prio), -EINVAL);
                CHECK_INT(prio, 12345); /* untouched on failure */
        }
        CHECK_INT(acs_log_parse_level(NULL, &(int){ 0 }), -EINVAL);
}

/* Runs first (constructors run in file order): logging before acs_log_init(). */
TEST(before_init)
{
        int p[2], status = 0;
        char buf[512] = "", want[256];
        ssize_t n, len = 0;
        pid_t pid;

        if (pipe(p) < 0)
                abort();
        fflush(stdout);
        pid = fork();
        if (pid == 0) {
                dup2(p[1], STDERR_FILENO);
                unsetenv("JOURNAL_STREAM");
                acs_log(LOG_DEBUG, "hidden by the default level");
                acs_log(LOG_INFO, "shown %s", "early");
                _exit(0);
        }
        close(p[1]);
        while ((n = read(p[0], buf + len, sizeof(buf) - 1 - (size_t)len)) > 0)
                len += n;
        buf[len] = '\0';
        close(p[0]);
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        /* the ident defaults to the program's name */
        snprintf(want, sizeof(want), "%s[%ld]: info: shown early\n", program_invocation_short_name,
                 (long)pid);
        CHECK_STR(buf, want);
}

/* ---- stderr format ---- */

TEST(stderr_format)
{
        struct capture c;
        char want[1024];
        _cleanup_free_ char *out = NULL;
        long pid = (long)getpid();

        acs_log_init("acs-test", ACS_LOG_STDERR, LOG_DEBUG);
        acs_log_set_user(NULL);
        capture_start(&c);
        acs_log(LOG_INFO, "hello %d", 42);
        acs_log_set_user("alice@example.org");
        acs_log(LOG_WARNING, "with user");
        acs_log_mb(LOG_ERR, "Archive/2024", "moved %s", "x");
        acs_log_set_user(NULL);
        acs_log_mb(LOG_DEBUG, "INBOX", "no user");
        acs_log(LOG_NOTICE, "line\nbreak\tand\x01""ctl");
        errno = ENOENT;
        acs_log(LOG_CRIT, "errno %m");
        CHECK_INT(errno, ENOENT); /* logging keeps errno */
        out = capture_end(&c);

        snprintf(want, sizeof(want),
                 "acs-test[%ld]: info: hello 42\n"
                 "acs-test[%ld]: warning: [alice@example.org] with user\n"
                 "acs-test[%ld]: err: [alice@example.org] [Archive/2024] moved x\n"
                 "acs-test[%ld]: debug: [INBOX] no user\n"
                 "acs-test[%ld]: notice: line\\nbreak\\tand\\x01ctl\n"
                 "acs-test[%ld]: crit: errno No such file or directory\n",
                 pid, pid, pid, pid, pid, pid);
        CHECK_STR(out, want);
}

TEST(level_filtering)
{
        static const int prios[] = { LOG_DEBUG, LOG_INFO, LOG_NOTICE, LOG_WARNING, LOG_ERR,
                                     LOG_CRIT, LOG_ALERT, LOG_EMERG };
        static const char *const names[] = { "debug", "info", "notice", "warning", "err",
                                             "crit", "alert", "emerg" };

        for (size_t max = 0; max < ACS_ARRAY_SIZE(prios); max++) {
                struct capture c;
                _cleanup_free_ char *out = NULL;

                acs_log_init("f", ACS_LOG_STDERR, prios[max]);
                acs_log_set_user(NULL);
                capture_start(&c);
                for (size_t i = 0; i < ACS_ARRAY_SIZE(prios); i++)
                        acs_log(prios[i], "m%zu", i);
                out = capture_end(&c);
                for (size_t i = 0; i < ACS_ARRAY_SIZE(prios); i++) {
                        char line[64];
                        bool shown, want = prios[i] <= prios[max];

                        snprintf(line, sizeof(line), "]: %s: m%zu\n", names[i], i);
                        shown = strstr(out, line) != NULL;
                        if (shown != want) {
                                printf("#   max %s: %s %s\n", names[max], names[i],
                                       shown ? "shown" : "missing");
                                test_failed_checks++;
                        }
                }
        }
}

TEST(long_message)
{
        struct capture c;
        _cleanup_free_ char *out = NULL, *big = malloc(20001);
        char prefix[64];

        if (!big)
                abort();
        memset(big, 'y', 20000);
        big[20000] = '\0';
        acs_log_init("long", ACS_LOG_STDERR, LOG_INFO);
        capture_start(&c);
        acs_log(LOG_INFO, "<%s>", big);
        out = capture_end(&c);
        snprintf(prefix, sizeof(prefix), "long[%ld]: info: <", (long)getpid());
        CHECK(strncmp(out, prefix, strlen(prefix)) == 0);
        CHECK_INT(strlen(out), strlen(prefix) + 20000 + 2);
        CHECK(strcmp(out + strlen(out) - 2, ">\n") == 0);
}

/* ---- target selection (JOURNAL_STREAM) ---- */

/* Logs one line with target auto under the given JOURNAL_STREAM (NULL = unset). */
static char *log_auto_with(const char *journal_stream, bool match_stderr)
{
        struct capture c;
        char value[64];

        capture_start(&c);
        if (match_stderr) {
                struct stat st;
                if (fstat(STDERR_FILENO, &st) < 0)
                        abort();
                snprintf(value, sizeof(value), "%llu:%llu", (unsigned long long)st.st_dev,
                         (unsigned long long)st.st_ino);
                journal_stream = value;
        }
        if (journal_stream)
                setenv("JOURNAL_STREAM", journal_stream, 1);
        else
                unsetenv("JOURNAL_STREAM");
        acs_log_init("auto", ACS_LOG_AUTO, LOG_INFO);
        acs_log(LOG_INFO, "where");
        unsetenv("JOURNAL_STREAM");
        return capture_end(&c);
}

TEST(auto_without_journal_stream_is_stderr)
{
        static const char *const values[] = { NULL, "", "1:2", "garbage", "12:34:56" };
        char want[64];

        snprintf(want, sizeof(want), "auto[%ld]: info: where\n", (long)getpid());
        for (size_t i = 0; i < ACS_ARRAY_SIZE(values); i++) {
                _cleanup_free_ char *out = log_auto_with(values[i], false);
                CHECK_STR(out, want);
        }
}

/* ---- journald, with a fake journal socket in a private mount namespace ---- */

#define CHILD_CHECK(cond)                                                                  \
        do {                                                                               \
                if (!(cond)) {                                                             \
                        printf("#   [child] %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, \
                               #cond);                                                     \
                        failures++;                                                        \
                }                                                                          \
        } while (0)

/* Becomes root of a private mount namespace with a fresh tmpfs on /run. */
static int private_run(void)
{
        uid_t uid = getuid();
        gid_t gid = getgid();

        if (unshare(CLONE_NEWNS) < 0) {
                char map[64];
                int fd;

                if (errno != EPERM || unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0)
                        return -errno;
                /* map ourselves to root inside so we may create files on the tmpfs */
                fd = open("/proc/self/setgroups", O_WRONLY);
                if (fd >= 0) {
                        (void)!write(fd, "deny", 4);
                        close(fd);
                }
                snprintf(map, sizeof(map), "0 %u 1", (unsigned)uid);
                fd = open("/proc/self/uid_map", O_WRONLY);
                if (fd < 0 || write(fd, map, strlen(map)) < 0)
                        return -errno;
                close(fd);
                snprintf(map, sizeof(map), "0 %u 1", (unsigned)gid);
                fd = open("/proc/self/gid_map", O_WRONLY);
                if (fd < 0 || write(fd, map, strlen(map)) < 0)
                        return -errno;
                close(fd);
        }
        if (mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) < 0 ||
            mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") < 0 ||
            mkdir("/run/systemd", 0755) < 0 || mkdir("/run/systemd/journal", 0755) < 0)
                return -errno;
        return 0;
}

/* One datagram of journald's native protocol, split into fields. */
struct entry {
        size_t n;
        char *name[16];
        char *value[16];
        size_t value_len[16];
};

static void entry_free(struct entry *e)
{
        for (size_t i = 0; i < e->n; i++) {
                free(e->name[i]);
                free(e->value[i]);
        }
        e->n = 0;
}

/*
 * Receives one datagram from the fake journald and parses it: "NAME=value\n" fields, or
 * "NAME\n" + 64-bit little-endian length + data + "\n" for values with a newline.
 * Returns -EAGAIN if nothing is waiting, -EBADMSG if the datagram is malformed.
 */
static int journal_recv(int fd, struct entry *e)
{
        static char buf[65536];
        ssize_t got = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        const char *p = buf, *end;

        *e = (struct entry){ 0 };
        if (got < 0)
                return -errno;
        end = buf + got;
        while (p < end) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                const char *eq = memchr(p, '=', (size_t)(end - p));
                size_t i = e->n;

                if (!nl || i == ACS_ARRAY_SIZE(e->name))
                        goto bad;
                if (eq && eq < nl) {
                        e->name[i] = strndup(p, (size_t)(eq - p));
                        e->value_len[i] = (size_t)(nl - eq - 1);
                        e->value[i] = strndup(eq + 1, e->value_len[i]);
                        p = nl + 1;
                } else {
                        uint64_t len = 0;
                        if (end - nl < 9)
                                goto bad;
                        for (int b = 7; b >= 0; b--)
                                len = len << 8 | (unsigned char)nl[1 + b];
                        if ((uint64_t)(end - (nl + 9)) < len + 1 || nl[9 + len] != '\n')
                                goto bad;
                        e->name[i] = strndup(p, (size_t)(nl - p));
                        e->value_len[i] = (size_t)len;
                        e->value[i] = strndup(nl + 9, (size_t)len);
                        p = nl + 9 + len + 1;
                }
                e->n++;
        }
        return 0;
bad:
        entry_free(e);
        return -EBADMSG;
}

/* The value of a field, or NULL. */
static const char *field_of(const struct entry *e, const char *name)
{
        for (size_t i = 0; i < e->n; i++)
                if (strcmp(e->name[i], name) == 0)
                        return e->value[i];
        return NULL;
}

static bool field_is(const struct entry *e, const char *name, const char *value)
{
        const char *v = field_of(e, name);
        if (!v || strcmp(v, value) != 0) {
                printf("#   [child] field %s = \"%s\", expected \"%s\"\n", name, v ? v : "(none)",
                       value);
                return false;
        }
        return true;
}

static int journal_child(void)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX,
                                  .sun_path = "/run/systemd/journal/socket" };
        int failures = 0, fd, r;
        struct entry e;
        char *out;

        r = private_run();
        if (r < 0) {
                printf("#   [child] cannot make a private /run for a fake journald: %s\n",
                       strerror(-r));
                return 2;
        }
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                printf("#   [child] fake journald socket: %s\n", strerror(errno));
                return 2;
        }

        /* auto + JOURNAL_STREAM naming stderr: the entry goes to journald, not stderr */
        acs_log_set_user("bob");
        out = log_auto_with(NULL, true);
        CHILD_CHECK(strcmp(out, "") == 0);
        free(out);
        CHILD_CHECK(journal_recv(fd, &e) == 0);
        CHILD_CHECK(e.n == 4);
        CHILD_CHECK(field_is(&e, "MESSAGE", "where"));
        CHILD_CHECK(field_is(&e, "PRIORITY", "6"));
        CHILD_CHECK(field_is(&e, "SYSLOG_IDENTIFIER", "auto"));
        CHILD_CHECK(field_is(&e, "ACS_USER", "bob"));
        CHILD_CHECK(field_of(&e, "ACS_MAILBOX") == NULL);
        entry_free(&e);

        /* the mailbox field, and a message with a newline (sent length-prefixed) */
        acs_log_mb(LOG_WARNING, "Sent", "two\nlines %d", 2);
        CHILD_CHECK(journal_recv(fd, &e) == 0);
        CHILD_CHECK(e.n == 5);
        CHILD_CHECK(field_is(&e, "MESSAGE", "two\nlines 2"));
        CHILD_CHECK(field_is(&e, "PRIORITY", "4"));
        CHILD_CHECK(field_is(&e, "ACS_USER", "bob"));
        CHILD_CHECK(field_is(&e, "ACS_MAILBOX", "Sent"));
        entry_free(&e);

        /* filtered messages reach nobody */
        acs_log(LOG_DEBUG, "hidden");
        CHILD_CHECK(journal_recv(fd, &e) == -EAGAIN);

        /* auto without JOURNAL_STREAM: stderr, and nothing at journald */
        acs_log_set_user(NULL);
        out = log_auto_with(NULL, false);
        CHILD_CHECK(strstr(out, "auto[") == out && strstr(out, "]: info: where\n"));
        free(out);
        CHILD_CHECK(journal_recv(fd, &e) == -EAGAIN);

        /* target journal with journald gone: falls back to stderr */
        close(fd);
        unlink(sa.sun_path);
        {
                struct capture c;
                capture_start(&c);
                acs_log_init("gone", ACS_LOG_JOURNAL, LOG_INFO);
                acs_log(LOG_ERR, "fallback");
                out = capture_end(&c);
                CHILD_CHECK(strstr(out, "]: err: fallback\n") != NULL);
                free(out);
        }
        return failures ? 1 : 0;
}

TEST(journald_fields)
{
        pid_t pid;
        int status = 0;

        fflush(stdout);
        pid = fork();
        if (pid < 0)
                abort();
        if (pid == 0) {
                int r = journal_child();
                fflush(stdout);
                _exit(r);
        }
        if (waitpid(pid, &status, 0) < 0)
                abort();
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                printf("#   journald child failed (status 0x%x)%s\n", status,
                       WIFEXITED(status) && WEXITSTATUS(status) == 2
                               ? ": this test needs root or user namespaces for a private /run"
                               : "");
                test_failed_checks++;
        }
}

/* ---- acs_die ---- */

TEST(die)
{
        int p[2], status = 0;
        char buf[256] = "";
        char want[128];
        ssize_t n;
        pid_t pid;

        if (pipe(p) < 0)
                abort();
        fflush(stdout);
        pid = fork();
        if (pid == 0) {
                dup2(p[1], STDERR_FILENO);
                acs_log_init("dying", ACS_LOG_STDERR, LOG_ERR);
                acs_die(3, "fatal %s", "thing");
        }
        close(p[1]);
        n = read(p[0], buf, sizeof(buf) - 1);
        close(p[0]);
        waitpid(pid, &status, 0);
        if (n > 0)
                buf[n] = '\0';
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 3);
        snprintf(want, sizeof(want), "dying[%ld]: crit: fatal thing\n", (long)pid);
        CHECK_STR(buf, want);
}

/* ---- threads: whole lines, none lost ---- */

#define THREADS 4
#define LINES 2000

static void *log_thread(void *arg)
{
        int t = (int)(long)arg;

        for (int i = 0; i < LINES; i++) {
                if (i % 500 == 0)
                        acs_log_set_user(t % 2 ? "odd" : "even");
                acs_log(LOG_INFO, "t%d n%d %s", t, i,
                        "padding padding padding padding padding padding padding padding");
        }
        return NULL;
}

TEST(threads)
{
        char path[] = "/tmp/acs-test-log-XXXXXX";
        int fd = mkstemp(path), saved;
        pthread_t th[THREADS];
        static bool seen[THREADS][LINES];
        FILE *f;
        char *line = NULL;
        size_t cap = 0;
        int lines = 0, bad = 0;

        if (fd < 0)
                abort();
        close(fd);
        fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
        saved = dup(STDERR_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
        acs_log_init("thr", ACS_LOG_STDERR, LOG_INFO);
        for (long t = 0; t < THREADS; t++)
                pthread_create(&th[t], NULL, log_thread, (void *)t);
        for (int t = 0; t < THREADS; t++)
                pthread_join(th[t], NULL);
        dup2(saved, STDERR_FILENO);
        close(saved);
        acs_log_set_user(NULL);

        f = fopen(path, "r");
        CHECK(f != NULL);
        while (f && getline(&line, &cap, f) > 0) {
                int t, i, used = 0;
                const char *m = strstr(line, "]: info: [");
                const char *body = m ? strstr(m, "] t") : NULL;

                lines++;
                if (!body || sscanf(body, "] t%d n%d padding%n", &t, &i, &used) != 2 ||
                    t < 0 || t >= THREADS || i < 0 || i >= LINES || seen[t][i] ||
                    strcmp(body + used, " padding padding padding padding padding padding "
                                        "padding\n") != 0) {
                        if (bad++ < 3)
                                printf("#   bad line: %s", line);
                        continue;
                }
                seen[t][i] = true;
        }
        free(line);
        if (f)
                fclose(f);
        unlink(path);
        CHECK_INT(lines, THREADS * LINES);
        CHECK_INT(bad, 0);
}

TEST_MAIN()
