/* SPDX-License-Identifier: MIT */
/* Program logging: journald (native protocol, ACS_* fields) or one stderr line per message. */
#include "acs/log.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
/* CODE_FILE/LINE/FUNC would always name this file: leave them out. */
#define SD_JOURNAL_SUPPRESS_LOCATION 1
#include <systemd/sd-journal.h>

/*
 * Thread safety: all state lives in `state` below and is read and written only with
 * `lock` held. A log call takes the lock once to copy what it needs (ident, target,
 * level, user) and formats and writes without it, so a slow stderr never blocks the
 * other threads' formatting, and one write(2) per line keeps lines whole. A
 * pthread_atfork() handler keeps the lock usable in a child forked while another
 * thread held it (acsd forks its agents and logs between fork and exec). Do not log
 * from signal handlers. The user is per process (acs_log_set_user), as every program
 * but acsd serves one user; acsd passes users as part of the message instead.
 *
 * Strings are kept in fixed buffers (no allocation, nothing to free at exit); longer
 * idents and users are truncated.
 */

#define IDENT_MAX 64
#define USER_MAX 320 /* an e-mail address: 64 + '@' + 255 */
#define LINE_STACK 1024
#define JOURNAL_SOCKET "/run/systemd/journal/socket"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static struct {
        bool initialized;
        char ident[IDENT_MAX];
        enum acs_log_target target; /* resolved: never ACS_LOG_AUTO once initialized */
        int max_prio;
        char user[USER_MAX];
} state;

static const char *const level_names[] = {
        [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",
        [LOG_ERR] = "err", [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

static void atfork_prepare(void) { pthread_mutex_lock(&lock); }
static void atfork_release(void) { pthread_mutex_unlock(&lock); }
static void register_atfork(void)
{
        pthread_atfork(atfork_prepare, atfork_release, atfork_release);
}

static void copy_string(char *dst, size_t size, const char *src)
{
        size_t n = strnlen(src, size - 1);
        memcpy(dst, src, n);
        dst[n] = '\0';
}

/* True when JOURNAL_STREAM ("DEV:INODE", set by systemd) names the file of stderr. */
static bool stderr_is_journal(void)
{
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;
        int used = 0;

        if (!e || sscanf(e, "%llu:%llu%n", &dev, &ino, &used) != 2 || e[used] != '\0')
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

/* Sets the state; lock held. */
static void init_locked(const char *ident, enum acs_log_target target, int max_prio)
{
        copy_string(state.ident, sizeof(state.ident), ident && *ident ? ident
                                                    : program_invocation_short_name);
        if (target == ACS_LOG_AUTO)
                target = stderr_is_journal() ? ACS_LOG_JOURNAL : ACS_LOG_STDERR;
        state.target = target;
        state.max_prio = max_prio < LOG_EMERG ? LOG_EMERG : max_prio > LOG_DEBUG ? LOG_DEBUG
                                                                              : max_prio;
        state.initialized = true;
}

void acs_log_init(const char *ident, enum acs_log_target target, int max_prio)
{
        pthread_once(&atfork_once, register_atfork);
        pthread_mutex_lock(&lock);
        init_locked(ident, target, max_prio);
        pthread_mutex_unlock(&lock);
}

void acs_log_set_user(const char *user)
{
        pthread_once(&atfork_once, register_atfork);
        pthread_mutex_lock(&lock);
        copy_string(state.user, sizeof(state.user), user ? user : "");
        pthread_mutex_unlock(&lock);
}

int acs_log_parse_level(const char *s, int *ret_prio)
{
        static const int accepted[] = { LOG_DEBUG, LOG_INFO, LOG_NOTICE, LOG_WARNING, LOG_ERR };

        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ACS_ARRAY_SIZE(accepted); i++)
                if (strcmp(s, level_names[accepted[i]]) == 0) {
                        *ret_prio = accepted[i];
                        return 0;
                }
        return -EINVAL;
}

/* A growing output buffer with a stack start; on allocation failure it truncates. */
struct out {
        char *p;
        size_t len, size;
        bool heap;
        char stack[LINE_STACK];
};

static void out_init(struct out *o)
{
        o->p = o->stack;
        o->len = 0;
        o->size = sizeof(o->stack);
        o->heap = false;
        o->p[0] = '\0';
}

/* Makes room for n more bytes plus NUL; false if it could not (the output truncates). */
static bool out_reserve(struct out *o, size_t n)
{
        size_t want, size;
        char *np;

        if (o->len + n < o->size)
                return true;
        want = o->len + n + 1;
        for (size = o->size * 2; size < want; size *= 2)
                ;
        np = o->heap ? realloc(o->p, size) : malloc(size);
        if (!np)
                return false;
        if (!o->heap)
                memcpy(np, o->p, o->len + 1);
        o->p = np;
        o->size = size;
        o->heap = true;
        return true;
}

static void out_bytes(struct out *o, const char *s, size_t n)
{
        if (!out_reserve(o, n))
                n = o->size - o->len - 1;
        memcpy(o->p + o->len, s, n);
        o->len += n;
        o->p[o->len] = '\0';
}

static void out_str(struct out *o, const char *s) { out_bytes(o, s, strlen(s)); }

/* Appends s with control characters escaped (\n, \t, \xNN) so one message stays one line. */
static void out_escaped(struct out *o, const char *s)
{
        for (const char *p = s; *p; p++) {
                unsigned char c = (unsigned char)*p;
                char esc[5];

                if (c >= 0x20 && c != 0x7f) {
                        const char *q = p;
                        while (q[1] && (unsigned char)q[1] >= 0x20 && q[1] != 0x7f)
                                q++;
                        out_bytes(o, p, (size_t)(q - p + 1));
                        p = q;
                        continue;
                }
                if (c == '\n')
                        out_str(o, "\\n");
                else if (c == '\t')
                        out_str(o, "\\t");
                else {
                        snprintf(esc, sizeof(esc), "\\x%02x", c);
                        out_str(o, esc);
                }
        }
}

static void out_vprintf(struct out *o, const char *fmt, va_list ap) ACS_PRINTF(2, 0);
static void out_vprintf(struct out *o, const char *fmt, va_list ap)
{
        va_list aq;
        int n;

        va_copy(aq, ap);
        n = vsnprintf(o->p + o->len, o->size - o->len, fmt, aq);
        va_end(aq);
        if (n < 0)
                return;
        if ((size_t)n >= o->size - o->len && out_reserve(o, (size_t)n)) {
                va_copy(aq, ap);
                n = vsnprintf(o->p + o->len, o->size - o->len, fmt, aq);
                va_end(aq);
                if (n < 0)
                        return;
        }
        o->len += (size_t)n < o->size - o->len ? (size_t)n : o->size - o->len - 1;
}

static void out_free(struct out *o)
{
        if (o->heap)
                free(o->p);
        out_init(o);
}

static void write_all(int fd, const char *p, size_t n)
{
        while (n > 0) {
                ssize_t w = write(fd, p, n);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        return;
                }
                p += w;
                n -= (size_t)w;
        }
}

static void log_stderr(const char *ident, int prio, const char *user, const char *mailbox,
                       const char *msg)
{
        struct out o;
        char head[IDENT_MAX + 48];

        out_init(&o);
        snprintf(head, sizeof(head), "%s[%ld]: %s: ", ident, (long)getpid(), level_names[prio]);
        out_escaped(&o, head);
        if (user[0]) {
                out_str(&o, "[");
                out_escaped(&o, user);
                out_str(&o, "] ");
        }
        if (mailbox) {
                out_str(&o, "[");
                out_escaped(&o, mailbox);
                out_str(&o, "] ");
        }
        out_escaped(&o, msg);
        out_str(&o, "\n");
        write_all(STDERR_FILENO, o.p, o.len);
        out_free(&o);
}

/* Sends one entry over journald's native protocol; < 0 if journald cannot be reached. */
static int log_journal(const char *ident, int prio, const char *user, const char *mailbox,
                       const char *msg)
{
        char prio_field[16];
        struct iovec iov[5];
        size_t n = 0;
        struct out f[4];
        int r;

        for (size_t i = 0; i < ACS_ARRAY_SIZE(f); i++)
                out_init(&f[i]);
        out_str(&f[0], "MESSAGE=");
        out_str(&f[0], msg);
        out_str(&f[1], "SYSLOG_IDENTIFIER=");
        out_str(&f[1], ident);
        snprintf(prio_field, sizeof(prio_field), "PRIORITY=%d", prio);
        iov[n++] = (struct iovec){ f[0].p, f[0].len };
        iov[n++] = (struct iovec){ prio_field, strlen(prio_field) };
        iov[n++] = (struct iovec){ f[1].p, f[1].len };
        if (user[0]) {
                out_str(&f[2], "ACS_USER=");
                out_str(&f[2], user);
                iov[n++] = (struct iovec){ f[2].p, f[2].len };
        }
        if (mailbox) {
                out_str(&f[3], "ACS_MAILBOX=");
                out_str(&f[3], mailbox);
                iov[n++] = (struct iovec){ f[3].p, f[3].len };
        }
        /* sd_journal_sendv() reports success when the socket is missing (journald not
         * running); check first so those lines land on stderr instead of nowhere. */
        r = access(JOURNAL_SOCKET, F_OK) < 0 ? -errno : sd_journal_sendv(iov, (int)n);
        for (size_t i = 0; i < ACS_ARRAY_SIZE(f); i++)
                out_free(&f[i]);
        return r;
}

void acs_logv(int prio, const char *mailbox, const char *fmt, va_list ap)
{
        char ident[IDENT_MAX], user[USER_MAX];
        enum acs_log_target target;
        struct out msg;
        int saved_errno = errno;

        prio = LOG_PRI(prio);
        pthread_once(&atfork_once, register_atfork);
        pthread_mutex_lock(&lock);
        if (!state.initialized)
                init_locked(NULL, ACS_LOG_AUTO, LOG_INFO);
        if (prio > state.max_prio) {
                pthread_mutex_unlock(&lock);
                errno = saved_errno;
                return;
        }
        memcpy(ident, state.ident, sizeof(ident));
        memcpy(user, state.user, sizeof(user));
        target = state.target;
        pthread_mutex_unlock(&lock);

        /* %m in fmt means the caller's errno. */
        errno = saved_errno;
        out_init(&msg);
        out_vprintf(&msg, fmt, ap);
        if (target != ACS_LOG_JOURNAL || log_journal(ident, prio, user, mailbox, msg.p) < 0)
                log_stderr(ident, prio, user, mailbox, msg.p);
        out_free(&msg);
        errno = saved_errno;
}

void acs_log(int prio, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        acs_logv(prio, NULL, fmt, ap);
        va_end(ap);
}

void acs_log_mb(int prio, const char *mailbox, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        acs_logv(prio, mailbox, fmt, ap);
        va_end(ap);
}

void acs_die(int status, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        acs_logv(LOG_CRIT, NULL, fmt, ap);
        va_end(ap);
        exit(status);
}
