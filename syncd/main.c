/* SPDX-License-Identifier: MIT */
/* acs-syncd standalone entry: options, credentials, the connect/sync/push loop and exit statuses. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "acs/agent.h"
#include "acs/bus.h"
#include "acs/log.h"
#include "acs/store.h"
#include "acs/util.h"
#include "imapconn.h"
#include "syncd.h"

#define PASSWORD_MAX 4096
#define BACKOFF_MAX_SEC 60
#define CRED_TIMEOUT_MS 30000

volatile sig_atomic_t syncd_stop;
/*
 * Set when acsd sends SYNC_NOW. The push loop (push.c) is to check it after each poll and
 * then sync every mailbox; until it does, the wake pipe is not written for it (the loop
 * would see a readable pipe it does not drain).
 */
volatile sig_atomic_t syncd_sync_requested;
static struct timespec t_start;

/* Milliseconds since start, for the debug log's phase timings. */
static double ms_since_start(void)
{
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)(t.tv_sec - t_start.tv_sec) * 1e3 + (double)(t.tv_nsec - t_start.tv_nsec) / 1e6;
}
static int wake_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
        int saved = errno;
        syncd_stop = 1;
        if (wake_pipe[1] >= 0)
                (void)!write(wake_pipe[1], "x", 1);
        errno = saved;
}

/*
 * --bus mode: the connection to acsd (lib/agent.c), dispatched by a thread of its own
 * (acs_agent_thread); the main thread asks for the password and reports through it.
 */
static acs_agent *agent;
static acs_agent_thread *agent_thr;

static void request_stop(void)
{
        syncd_stop = 1;
        if (wake_pipe[1] >= 0)
                (void)!write(wake_pipe[1], "x", 1);
}

static void on_agent_stop(void *userdata)
{
        acs_log(LOG_NOTICE, "bus: STOP from acsd, or its bus is gone: stopping");
        request_stop();
}

static void on_agent_sync(void *userdata, const char *mailbox)
{
        acs_log(LOG_INFO, "bus: SYNC_NOW%s%s", mailbox ? " " : "", mailbox ? mailbox : "");
        syncd_sync_requested = 1; /* every mailbox: a name is only a hint */
        if (wake_pipe[1] >= 0)
                (void)!write(wake_pipe[1], "x", 1);
}

static int agent_start(const char *address, int key_fd)
{
        int r = acs_agent_open(address, key_fd, ACS_AGENT_SYNCD, &agent);
        if (r < 0)
                return r;
        return acs_agent_thread_start(agent, on_agent_stop, on_agent_sync, NULL, &agent_thr);
}

static void agent_stop(void)
{
        agent_thr = acs_agent_thread_stop(agent_thr);
        if (agent) {
                uint64_t n = acs_agent_rejected(agent);
                if (n)
                        acs_log(LOG_WARNING, "bus: %llu message(s) were rejected (last: %s)", (unsigned long long)n,
                                acs_agent_last_error(agent));
                agent = acs_agent_free(agent);
                acs_bus_shutdown();
        }
}

/* Tells acsd how a connection attempt ended (LOGIN_RESULT), if there is an acsd. */
static void agent_login_result(int r, bool permanent)
{
        if (!agent_thr)
                return;
        enum acs_agent_login res = r == 0 ? ACS_AGENT_LOGIN_OK
                                   : r == -EACCES ? ACS_AGENT_LOGIN_REJECTED
                                   : permanent ? ACS_AGENT_LOGIN_FAILED
                                               : ACS_AGENT_LOGIN_UNAVAILABLE;
        uint32_t status = r == 0 ? 0 : (uint32_t)acs_imap_error_exit_status(r);
        int e = acs_agent_thread_send_login_result(agent_thr, res, status);
        if (e < 0)
                acs_log(LOG_WARNING, "bus: cannot send the login result: %s", strerror(-e));
}

static void agent_status(enum acs_agent_state st, enum acs_agent_progress ev)
{
        if (!agent_thr)
                return;
        int e = acs_agent_thread_send_status(agent_thr, st, 0);
        if (e == 0 && ev)
                e = acs_agent_thread_send_progress(agent_thr, ev, 0, 0);
        if (e < 0)
                acs_log(LOG_WARNING, "bus: cannot send a status: %s", strerror(-e));
}

/*
 * For the push loop (push.c): a sync round starts (done false: STATUS and PROGRESS
 * "syncing") or ended (done true: PROGRESS "synced", STATUS "online"), so that acsd can
 * answer a client's sync request. Nothing without --bus.
 */
void syncd_bus_round(bool done);
void syncd_bus_round(bool done)
{
        if (!agent_thr)
                return;
        int e = acs_agent_thread_send_status(agent_thr, done ? ACS_AGENT_STATE_ONLINE : ACS_AGENT_STATE_SYNCING, 0);
        if (e == 0)
                e = acs_agent_thread_send_progress(agent_thr,
                                                   done ? ACS_AGENT_PROGRESS_SYNCED : ACS_AGENT_PROGRESS_SYNCING, 0, 0);
        if (e < 0)
                acs_log(LOG_WARNING, "bus: cannot send a status: %s", strerror(-e));
}

/*
 * The password for this login: --password-file/-fd's copy, or (--bus) a fresh one from
 * acsd, which the caller wipes right after the login. 0 or -errno.
 */
static int get_password(const syncd_opts *o, char **ret_pw, bool *ret_owned)
{
        if (!agent_thr) {
                *ret_pw = o->password;
                *ret_owned = false;
                return 0;
        }
        char *pw = NULL;
        size_t len = 0;
        int r = acs_agent_thread_get_password(agent_thr, CRED_TIMEOUT_MS, &pw, &len);
        if (r == -ECANCELED) {
                request_stop();
                return -EINTR;
        }
        if (r < 0) {
                acs_log(LOG_ERR, "bus: no password from acsd: %s", strerror(-r));
                return r == -ETIMEDOUT ? -EAGAIN : r;
        }
        *ret_pw = pw;
        *ret_owned = true;
        return 0;
}

static void usage(FILE *f)
{
        fprintf(f,
                "usage: acs-syncd --db PATH --url imaps://HOST[:PORT]|imap://HOST[:PORT] --user USER\n"
                "                 (--password-file FILE | --password-fd N | --bus ADDRESS --key-fd N)\n"
                "                 [--ca FILE] [--once]\n"
                "                 [--progress=json] [--insecure-plaintext] [--timeout SEC]\n"
                "                 [--log-level debug|info|notice|warning|err] [--retries N] [--poll SEC]\n"
                "Keeps the acs cache at PATH in step with the IMAP mailbox (read direction).\n"
                "Exit statuses: 0 done/stopped, 64 usage, 66 no password file, 69 certificate not trusted,\n"
                "70 internal error, 73 cannot create the cache, 74 cache I/O error, 75 temporary failure\n"
                "(network), 76 protocol error, 77 login rejected, 78 bad URL (see docs/sync.md).\n");
}

/* Reads a password (first line, without its line end) into sodium-guarded memory. */
static int read_password(int fd, char **ret)
{
        char *buf = sodium_malloc(PASSWORD_MAX + 1);
        if (!buf)
                return -ENOMEM;
        size_t len = 0;
        for (;;) {
                if (len == PASSWORD_MAX) {
                        sodium_free(buf);
                        return -E2BIG;
                }
                ssize_t n = read(fd, buf + len, PASSWORD_MAX - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        int e = -errno;
                        sodium_free(buf);
                        return e;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        buf[len] = 0;
        char *nl = memchr(buf, '\n', len);
        if (nl) {
                *nl = 0;
                len = (size_t)(nl - buf);
        }
        if (len && buf[len - 1] == '\r')
                buf[--len] = 0;
        if (len == 0) {
                sodium_free(buf);
                return -ENODATA;
        }
        *ret = buf;
        return 0;
}

/* polite: LOGOUT first; otherwise closed at once, without any I/O (acs_imap_abort). */
static void disconnect(syncd *sd, bool polite)
{
        if (!sd->imap)
                return;
        if (polite)
                mailimap_logout(sd->imap);
        acs_imap_abort(sd->imap);
        sd->imap = NULL;
        sd->selected = acs_free(sd->selected);
        sd->qresync_enabled = false;
}

static void read_caps(syncd *sd, bool fresh)
{
        struct mailimap_capability_data *cd = NULL;
        /* servers announce more after login; ask unless the login reply carried the list */
        if (!fresh && mailimap_capability(sd->imap, &cd) == MAILIMAP_NO_ERROR && cd)
                mailimap_capability_data_free(cd);
        sd->caps = (syncd_caps){
                .qresync = mailimap_has_extension(sd->imap, "QRESYNC"),
                .condstore = mailimap_has_extension(sd->imap, "CONDSTORE") ||
                             mailimap_has_extension(sd->imap, "QRESYNC"),
                .notify = mailimap_has_extension(sd->imap, "NOTIFY"),
                .idle = mailimap_has_extension(sd->imap, "IDLE"),
                .special_use = mailimap_has_extension(sd->imap, "SPECIAL-USE"),
                .enable = mailimap_has_extension(sd->imap, "ENABLE"),
        };
}

static int enable_qresync(syncd *sd)
{
        if (!sd->caps.qresync || !sd->caps.enable)
                return 0;
        clist *l = clist_new();
        if (!l)
                return -ENOMEM;
        char *name = strdup("QRESYNC");
        struct mailimap_capability *cap = name ? mailimap_capability_new(MAILIMAP_CAPABILITY_NAME, NULL, name) : NULL;
        if (!cap || clist_append(l, cap) < 0) {
                if (cap)
                        mailimap_capability_free(cap);
                else
                        free(name);
                clist_free(l);
                return -ENOMEM;
        }
        struct mailimap_capability_data *req = mailimap_capability_data_new(l);
        struct mailimap_capability_data *res = NULL;
        int r = mailimap_enable(sd->imap, req, &res);
        mailimap_capability_data_free(req);
        if (res)
                mailimap_capability_data_free(res);
        if (r != MAILIMAP_NO_ERROR)
                return syncd_etpan_error(r);
        sd->qresync_enabled = true;
        return 0;
}

/* Connects and logs in. Returns 0 or -errno (classes as in imapconn.h). */
static int connect_login(syncd *sd)
{
        const syncd_opts *o = sd->opts;
        acs_imap_target t = {
                .url = o->url,
                .ca_file = o->ca_file,
                .insecure_plaintext = o->insecure_plaintext,
                .timeout_sec = o->timeout_sec,
        };
        _cleanup_free_ char *err = NULL;
        mailimap *imap = NULL;
        acs_log(LOG_DEBUG, "%.1f ms: connecting", ms_since_start());
        int r = acs_imap_connect(&t, &imap, &err);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot connect to %s: %s", o->url, err ? err : strerror(-r));
                return r;
        }
        err = acs_free(err);
        acs_log(LOG_DEBUG, "%.1f ms: connected, logging in", ms_since_start());
        const void *caps_before = imap->imap_connection_info ? imap->imap_connection_info->imap_capability : NULL;
        char *password = NULL;
        bool owned = false;
        r = get_password(o, &password, &owned);
        if (r < 0) {
                acs_imap_abort(imap);
                return r;
        }
        r = acs_imap_login(imap, o->user, password, &err);
        if (owned)
                password = acs_secret_free(password); /* asked for each login, forgotten after it */
        if (r < 0) {
                acs_log(LOG_ERR, "login as %s at %s failed: %s", o->user, o->url, err ? err : strerror(-r));
                acs_imap_abort(imap);
                return r;
        }
        sd->imap = imap;
        r = syncd_wrap_eof(imap);
        if (r < 0)
                return r;
        const void *caps_after = imap->imap_connection_info ? imap->imap_connection_info->imap_capability : NULL;
        read_caps(sd, caps_after && caps_after != caps_before);
        r = enable_qresync(sd);
        if (r < 0) {
                acs_log(LOG_WARNING, "ENABLE QRESYNC failed; using CONDSTORE");
                if (r == -ECONNRESET || r == -EPROTO)
                        return r;
        }
        acs_log(LOG_DEBUG, "%.1f ms: logged in", ms_since_start());
        acs_log(LOG_INFO, "connected to %s as %s (%s%s%s%s)", o->url, o->user,
                sd->qresync_enabled ? "QRESYNC " : "", sd->caps.condstore ? "CONDSTORE " : "",
                sd->caps.notify ? "NOTIFY " : "", sd->caps.idle ? "IDLE" : "");
        return 0;
}

static bool permanent_connect_error(int r)
{
        return r == -EKEYREJECTED || r == -EACCES || r == -EINVAL;
}

/* Sleeps up to sec seconds; returns early (true) when a stop was requested. */
static bool sleep_or_stop(unsigned sec)
{
        struct pollfd p = {.fd = wake_pipe[0], .events = POLLIN};
        int64_t end = (int64_t)time(NULL) + sec;
        while (!syncd_stop) {
                int64_t left = end - (int64_t)time(NULL);
                if (left <= 0)
                        return false;
                if (poll(&p, 1, (int)left * 1000) > 0 && !syncd_stop) {
                        char b[64];
                        while (read(wake_pipe[0], b, sizeof(b)) > 0)
                                ;
                }
                if (syncd_sync_requested) {
                        syncd_sync_requested = 0;
                        return false; /* acsd wants a sync: reconnect now */
                }
        }
        return true;
}

static int run(syncd *sd)
{
        const syncd_opts *o = sd->opts;
        unsigned attempt = 0, backoff = 1;
        int last = 0;

        while (!syncd_stop) {
                int r = connect_login(sd);
                if (r == -EINTR || syncd_stop)
                        break;
                if (r < 0) {
                        bool permanent = permanent_connect_error(r) || (r == -EPROTO && attempt == 0);
                        agent_login_result(r, permanent);
                        if (permanent)
                                return acs_imap_error_exit_status(r);
                        goto retry;
                }
                agent_login_result(0, false);
                agent_status(ACS_AGENT_STATE_SYNCING, 0);
                r = syncd_sync_list(sd);
                acs_log(LOG_DEBUG, "%.1f ms: mailbox list read", ms_since_start());
                if (r == 0)
                        r = syncd_sync_all(sd, true);
                acs_log(LOG_DEBUG, "%.1f ms: mailboxes synced", ms_since_start());
                if (r == 0 && sd->list_dirty) {
                        r = syncd_sync_list(sd);
                        if (r == 0)
                                r = syncd_sync_all(sd, true);
                }
                if (r == 0) {
                        attempt = 0;
                        backoff = 1;
                        progress_event("synced", NULL);
                        agent_status(ACS_AGENT_STATE_ONLINE, ACS_AGENT_PROGRESS_SYNCED);
                        if (o->once) {
                                disconnect(sd, true);
                                return EX_OK;
                        }
                        r = syncd_push_loop(sd);
                        if (r == 0)
                                break; /* stopped */
                }
                if (r == -EINTR || syncd_stop)
                        break;
                if (r == -EIO || r == -EBUSY || r == -EBADMSG || r == -ENOSPC) {
                        acs_log(LOG_ERR, "cache error: %s (%s)", strerror(-r), acs_store_errmsg(sd->store));
                        disconnect(sd, false);
                        return EX_IOERR;
                }
                if (r == -ENOMEM) {
                        disconnect(sd, false);
                        return EX_SOFTWARE;
                }
                acs_log(LOG_WARNING, "connection reset: %s", strerror(-r));
        retry:
                last = r;
                disconnect(sd, false);
                attempt++;
                if (o->once && attempt > o->retries) {
                        acs_log(LOG_ERR, "giving up after %u attempts: %s", attempt, strerror(-last));
                        return last == -EPROTO ? EX_PROTOCOL : EX_TEMPFAIL;
                }
                acs_log(LOG_NOTICE, "reconnecting in %u s", backoff);
                progress_event("reconnect", NULL);
                agent_status(ACS_AGENT_STATE_OFFLINE, ACS_AGENT_PROGRESS_RECONNECT);
                if (sleep_or_stop(backoff))
                        break;
                backoff = backoff * 2 > BACKOFF_MAX_SEC ? BACKOFF_MAX_SEC : backoff * 2;
        }
        /* Stopped by a signal: whatever was committed stays; an open batch was rolled back. */
        disconnect(sd, false);
        return EX_OK;
}

int main(int argc, char **argv)
{
        enum { OPT_DB = 256, OPT_URL, OPT_USER, OPT_PWFILE, OPT_PWFD, OPT_CA, OPT_ONCE, OPT_PROGRESS,
               OPT_INSECURE, OPT_TIMEOUT, OPT_LOGLEVEL, OPT_RETRIES, OPT_POLL, OPT_BUS, OPT_KEYFD, OPT_HELP };
        static const struct option longopts[] = {
                {"db", required_argument, NULL, OPT_DB},
                {"url", required_argument, NULL, OPT_URL},
                {"user", required_argument, NULL, OPT_USER},
                {"password-file", required_argument, NULL, OPT_PWFILE},
                {"password-fd", required_argument, NULL, OPT_PWFD},
                {"ca", required_argument, NULL, OPT_CA},
                {"once", no_argument, NULL, OPT_ONCE},
                {"progress", required_argument, NULL, OPT_PROGRESS},
                {"insecure-plaintext", no_argument, NULL, OPT_INSECURE},
                {"timeout", required_argument, NULL, OPT_TIMEOUT},
                {"log-level", required_argument, NULL, OPT_LOGLEVEL},
                {"retries", required_argument, NULL, OPT_RETRIES},
                {"poll", required_argument, NULL, OPT_POLL},
                {"bus", required_argument, NULL, OPT_BUS},
                {"key-fd", required_argument, NULL, OPT_KEYFD},
                {"help", no_argument, NULL, OPT_HELP},
                {0},
        };
        /* --poll: a safety net by default (Dovecot 2.3's NOTIFY can fall silent; docs/sync.md) */
        syncd_opts o = {.timeout_sec = 30, .retries = 5, .poll_sec = 30};
        const char *pwfile = NULL;
        int pwfd = -1;
        const char *bus_address = NULL;
        int keyfd = -1;
        int loglevel = LOG_NOTICE;
        int c;

        clock_gettime(CLOCK_MONOTONIC, &t_start);
        while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
                switch (c) {
                case OPT_DB: o.db_path = optarg; break;
                case OPT_URL: o.url = optarg; break;
                case OPT_USER: o.user = optarg; break;
                case OPT_PWFILE: pwfile = optarg; break;
                case OPT_PWFD: {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (*optarg == 0 || *end || v < 0 || v > 65535) {
                                fprintf(stderr, "acs-syncd: --password-fd needs a file descriptor number\n");
                                return EX_USAGE;
                        }
                        pwfd = (int)v;
                        break;
                }
                case OPT_BUS: bus_address = optarg; break;
                case OPT_KEYFD: {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (*optarg == 0 || *end || v < 3 || v > 65535) {
                                fprintf(stderr, "acs-syncd: --key-fd needs a file descriptor number (>= 3)\n");
                                return EX_USAGE;
                        }
                        keyfd = (int)v;
                        break;
                }
                case OPT_CA: o.ca_file = optarg; break;
                case OPT_ONCE: o.once = true; break;
                case OPT_PROGRESS:
                        if (strcmp(optarg, "json") != 0) {
                                fprintf(stderr, "acs-syncd: --progress takes 'json'\n");
                                return EX_USAGE;
                        }
                        o.progress_json = true;
                        break;
                case OPT_INSECURE: o.insecure_plaintext = true; break;
                case OPT_TIMEOUT: {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (*optarg == 0 || *end || v < 1 || v > 3600) {
                                fprintf(stderr, "acs-syncd: --timeout takes 1..3600 seconds\n");
                                return EX_USAGE;
                        }
                        o.timeout_sec = (unsigned)v;
                        break;
                }
                case OPT_RETRIES: {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (*optarg == 0 || *end || v < 0 || v > 1000) {
                                fprintf(stderr, "acs-syncd: --retries takes 0..1000\n");
                                return EX_USAGE;
                        }
                        o.retries = (unsigned)v;
                        break;
                }
                case OPT_POLL: {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (*optarg == 0 || *end || v < 0 || v > 86400) {
                                fprintf(stderr, "acs-syncd: --poll takes 0..86400 seconds\n");
                                return EX_USAGE;
                        }
                        o.poll_sec = (unsigned)v;
                        break;
                }
                case OPT_LOGLEVEL:
                        if (acs_log_parse_level(optarg, &loglevel) < 0) {
                                fprintf(stderr, "acs-syncd: unknown log level '%s'\n", optarg);
                                return EX_USAGE;
                        }
                        break;
                case OPT_HELP: usage(stdout); return EX_OK;
                default: usage(stderr); return EX_USAGE;
                }
        }
        int sources = (pwfile != NULL) + (pwfd >= 0) + (bus_address != NULL);
        if (optind != argc || !o.db_path || !o.url || !o.user || sources != 1 || (!bus_address != (keyfd < 0))) {
                fprintf(stderr, "acs-syncd: --db, --url, --user and exactly one of --password-file, "
                                "--password-fd or --bus (with --key-fd) are required\n");
                usage(stderr);
                return EX_USAGE;
        }
        if (strncmp(o.url, "imaps://", 8) != 0 && strncmp(o.url, "imap://", 7) != 0) {
                fprintf(stderr, "acs-syncd: --url must start with imaps:// or imap://\n");
                return EX_USAGE;
        }
        if (o.insecure_plaintext && strncmp(o.url, "imap://", 7) != 0) {
                fprintf(stderr, "acs-syncd: --insecure-plaintext only goes with imap://\n");
                return EX_USAGE;
        }

        acs_log_init("acs-syncd", ACS_LOG_AUTO, loglevel);
        acs_log_set_user(o.user);
        if (sodium_init() < 0)
                acs_die(EX_SOFTWARE, "libsodium failed to initialise");

        int r;
        if (bus_address) {
                /* the password will be in this process's memory: keep it out of core dumps and ptrace */
                if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
                        acs_log(LOG_WARNING, "cannot clear the dumpable flag: %m");
                r = agent_start(bus_address, keyfd);
                if (r < 0) {
                        acs_log(LOG_ERR, "cannot join acsd's bus at %s: %s", bus_address,
                                r == -EBADMSG ? "bad key handover" : strerror(-r));
                        agent_stop();
                        return r == -EBADMSG || r == -EBADF ? EX_USAGE : EX_UNAVAILABLE;
                }
        } else if (pwfile) {
                _cleanup_close_ int fd = open(pwfile, O_RDONLY | O_CLOEXEC | O_NOCTTY);
                if (fd < 0) {
                        acs_log(LOG_ERR, "cannot open password file %s: %m", pwfile);
                        return errno == EACCES ? EX_NOPERM : EX_NOINPUT;
                }
                r = read_password(fd, &o.password);
        } else {
                r = read_password(pwfd, &o.password);
                close(pwfd);
        }
        if (!bus_address && r < 0) {
                acs_log(LOG_ERR, "cannot read the password: %s", r == -ENODATA ? "empty" : strerror(-r));
                return r == -EBADF ? EX_USAGE : EX_NOINPUT;
        }

        if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
                acs_die(EX_OSERR, "pipe: %m");
        struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: blocking reads return */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        _cleanup_free_ char *oerr = NULL;
        acs_store *store = NULL;
        r = acs_store_open(o.db_path, ACS_STORE_CREATE, &store, &oerr);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot open the cache: %s", oerr ? oerr : strerror(-r));
                sodium_free(o.password);
                agent_stop();
                return r == -EACCES ? EX_NOPERM : r == -ENOENT ? EX_CANTCREAT : EX_IOERR;
        }

        /* what a killed writer left in limbo is decided before anything is read and acted on */
        r = acs_store_settle(store);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot write to the cache: %s", acs_store_errmsg(store));
                acs_store_close(store);
                sodium_free(o.password);
                agent_stop();
                return EX_IOERR;
        }
        acs_log(LOG_DEBUG, "%.1f ms: cache open", ms_since_start());
        progress_init(o.progress_json);
        syncd sd = {.opts = &o, .store = store, .wake_fd = wake_pipe[0]};
        r = writer_start(o.db_path, &sd.writer);
        if (r < 0) {
                acs_store_close(store);
                sodium_free(o.password);
                agent_stop();
                return EX_IOERR;
        }
        int status = run(&sd);
        acs_log(LOG_DEBUG, "%.1f ms: disconnected", ms_since_start());
        sd.writer = writer_stop(sd.writer);
        if (syncd_stop)
                acs_log(LOG_NOTICE, agent ? "stopped (signal or acsd's STOP)" : "stopped by signal");
        agent_status(ACS_AGENT_STATE_STOPPING, 0);
        agent_stop();
        progress_finish();
        acs_store_close(store);
        acs_log(LOG_DEBUG, "%.1f ms: cache closed", ms_since_start());
        sodium_free(o.password);
        return status;
}
