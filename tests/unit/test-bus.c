/* SPDX-License-Identifier: MIT */
/* Tests of acsd's private bus over a real dbus-daemon: policy, sealed round trips, and every rejected kind of message. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dbus/dbus.h>
#include <sodium.h>

#include "acs/agent.h"
#include "acs/bus.h"
#include "acs/util.h"
#include "acs/wire.h"
#include "test.h"

#define AGENT_UID 65534
#define AGENT2_UID 1 /* "daemon": dbus-daemon refuses uids with no passwd entry */
#define PASSWORD "s3cret p\xc3\xa4ssword \"with\" spaces"

static int64_t mono_ms(void)
{
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* ---- the acsd side of a test: daemon, connection, wire endpoint, received messages ---- */

#define QMAX 64
typedef struct fixture {
        char dir[64];
        char *address;
        pid_t daemon_pid;
        acs_bus *bus;
        acs_wire *wire;
        acs_wire_pub pub;
        struct { char sender[64]; uint8_t *msg; size_t len; } q[QMAX];
        int nq;
        char gone[8][64];
        int ngone;
} fixture;

static void fx_on_message(void *ud, const char *sender, const uint8_t *msg, size_t len)
{
        fixture *f = ud;
        if (f->nq >= QMAX)
                return;
        snprintf(f->q[f->nq].sender, sizeof(f->q[f->nq].sender), "%s", sender);
        f->q[f->nq].msg = malloc(len);
        memcpy(f->q[f->nq].msg, msg, len);
        f->q[f->nq].len = len;
        f->nq++;
}

static void fx_on_gone(void *ud, const char *name)
{
        fixture *f = ud;
        if (f->ngone < 8)
                snprintf(f->gone[f->ngone++], 64, "%s", name);
}

/* A zeroed fixture and a new directory for its daemon (0755: agents reach the socket). */
static bool fx_dir(fixture *f)
{
        memset(f, 0, sizeof(*f));
        snprintf(f->dir, sizeof(f->dir), "/tmp/acs-bus-XXXXXX");
        return mkdtemp(f->dir) && chmod(f->dir, 0755) == 0;
}

static bool fx_setup(fixture *f)
{
        if (!fx_dir(f) || acs_wire_init() < 0)
                return false;
        if (geteuid() != 0) {
                printf("# these tests need root (agents run as uid %d); FAILING\n", AGENT_UID);
                return false;
        }
        acs_bus_daemon_opts o = {.dir = f->dir, .max_agents = 64, .owner_uid = 0};
        int r = acs_bus_daemon_start(&o, &f->address, &f->daemon_pid);
        if (r < 0) {
                printf("# acs_bus_daemon_start: %s\n", strerror(-r));
                return false;
        }
        r = acs_bus_connect(f->address, &f->bus);
        if (r == 0)
                r = acs_bus_request_name(f->bus, ACS_BUS_NAME);
        if (r == 0)
                r = acs_bus_watch_departures(f->bus);
        if (r < 0) {
                printf("# acsd connection: %s\n", strerror(-r));
                return false;
        }
        acs_bus_set_handlers(f->bus, fx_on_message, fx_on_gone, f);
        acs_wire_keys *k = NULL;
        if (acs_wire_keys_new(&k) < 0)
                return false;
        acs_wire_keys_public(k, &f->pub);
        return acs_wire_new(ACS_WIRE_ID_ACSD, &k, &f->wire) == 0;
}

static void fx_teardown(fixture *f);

/* fx_setup, checked; false (the fixture torn down already) when there is no bus to test. */
static bool fx_start(fixture *f)
{
        CHECK(fx_setup(f));
        if (f->bus)
                return true;
        fx_teardown(f);
        return false;
}

static void fx_pop(fixture *f)
{
        free(f->q[0].msg);
        memmove(&f->q[0], &f->q[1], sizeof(f->q[0]) * (size_t)(f->nq - 1));
        f->nq--;
}

static void fx_teardown(fixture *f)
{
        while (f->nq)
                fx_pop(f);
        f->bus = acs_bus_free(f->bus);
        f->wire = acs_wire_free(f->wire);
        if (f->daemon_pid > 0)
                CHECK_INT(acs_bus_daemon_stop(f->daemon_pid), 0);
        free(f->address);
        char path[128];
        snprintf(path, sizeof(path), "%s/bus.conf", f->dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/bus.sock", f->dir);
        unlink(path);
        rmdir(f->dir);
}

/* Waits until a message is queued (true) or timeout_ms passed. */
static bool fx_wait(fixture *f, int timeout_ms)
{
        int64_t end = mono_ms() + timeout_ms;
        while (f->nq == 0) {
                int64_t left = end - mono_ms();
                if (left <= 0)
                        return false;
                if (acs_bus_wait(f->bus, (int)left) < 0)
                        return false;
        }
        return true;
}

/* Makes keys for child id, hands them over on a pipe; returns the read end (child's). */
static int fx_child_keys(fixture *f, uint32_t id, acs_wire_pub *ret_pub)
{
        acs_wire_keys *k = NULL;
        int p[2];
        if (acs_wire_keys_new(&k) < 0 || pipe2(p, O_CLOEXEC) < 0)
                return -1;
        acs_wire_keys_public(k, ret_pub);
        CHECK_INT(acs_wire_add_peer(f->wire, id, ret_pub), 0);
        CHECK_INT(acs_wire_handover_write(p[1], id, k, &f->pub), 0);
        close(p[1]);
        acs_wire_keys_free(k);
        return p[0];
}

/*
 * fork() with stdout flushed first (a child must not print the parent's buffered TAP lines
 * again); the child runs as uid, gid 65534, no groups (it exits 99 if that fails).
 */
static pid_t fork_as(uid_t uid)
{
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0 && (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(uid) < 0 || getuid() != uid))
                _exit(99);
        return pid;
}

static int wait_child(pid_t pid, int timeout_ms)
{
        int64_t end = mono_ms() + timeout_ms;
        int status;
        for (;;) {
                pid_t w = waitpid(pid, &status, WNOHANG);
                if (w == pid)
                        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                if (mono_ms() > end) {
                        kill(pid, SIGKILL);
                        waitpid(pid, &status, 0);
                        return -1;
                }
                usleep(2000);
        }
}

/* ---- tests ---- */

TEST(payload_parsers)
{
        /* round trips, and every other length rejected; random bytes never crash a parser and
         * what a parser accepts has its fields in range */
        uint8_t buf[ACS_AGENT_CRED_SIZE + 8];
        enum acs_agent_kind kind;
        enum acs_agent_login lr;
        enum acs_agent_progress pe;
        enum acs_agent_state st;
        uint32_t u32;
        uint64_t a, b;
        char *s = NULL;
        size_t n;
        CHECK_INT(acs_wire_init(), 0);
        acs_agent_hello_pack(ACS_AGENT_FS, 4242, buf);
        CHECK_INT(acs_agent_hello_parse(buf, 8, &kind, &u32), 0);
        CHECK_INT(kind, ACS_AGENT_FS);
        CHECK_INT(u32, 4242);
        acs_agent_login_pack(ACS_AGENT_LOGIN_REJECTED, 77, buf);
        CHECK_INT(acs_agent_login_parse(buf, 8, &lr, &u32), 0);
        CHECK_INT(lr, ACS_AGENT_LOGIN_REJECTED);
        CHECK_INT(u32, 77);
        acs_agent_progress_pack(ACS_AGENT_PROGRESS_SYNCING, 5, 9, buf);
        CHECK_INT(acs_agent_progress_parse(buf, 20, &pe, &a, &b), 0);
        CHECK(pe == ACS_AGENT_PROGRESS_SYNCING && a == 5 && b == 9);
        acs_agent_status_pack(ACS_AGENT_STATE_OFFLINE, 3, buf);
        CHECK_INT(acs_agent_status_parse(buf, 8, &st, &u32), 0);
        CHECK(st == ACS_AGENT_STATE_OFFLINE && u32 == 3);
        acs_agent_change_pack(123456789012ull, buf);
        CHECK_INT(acs_agent_change_parse(buf, 8, &a), 0);
        CHECK_INT(a, 123456789012ull);
        uint8_t *c = NULL;
        CHECK_INT(acs_agent_cred_pack("pw\x01\xff", 4, &c), 0);
        CHECK_INT(acs_agent_cred_parse(c, ACS_AGENT_CRED_SIZE, &s, &n), 0);
        CHECK(s && n == 4 && !memcmp(s, "pw\x01\xff", 5));
        s = acs_secret_free(s);
        CHECK_INT(acs_agent_cred_parse(c, ACS_AGENT_CRED_SIZE - 1, &s, &n), -EBADMSG);
        c[ACS_AGENT_CRED_SIZE - 1] = 1; /* padding must be zero */
        CHECK_INT(acs_agent_cred_parse(c, ACS_AGENT_CRED_SIZE, &s, &n), -EBADMSG);
        acs_secret_free(c);
        CHECK_INT(acs_agent_cred_pack("", 0, &c), -EINVAL);
        CHECK_INT(acs_agent_cred_pack("a\0b", 3, &c), -EINVAL);
        char big[ACS_AGENT_PASSWORD_MAX + 2];
        memset(big, 'x', sizeof(big));
        CHECK_INT(acs_agent_cred_pack(big, ACS_AGENT_PASSWORD_MAX + 1, &c), -EINVAL);
        CHECK_INT(acs_agent_cred_pack(big, ACS_AGENT_PASSWORD_MAX, &c), 0);
        acs_secret_free(c);
        for (size_t len = 0; len < 40; len++) {
                if (len != 8) {
                        CHECK_INT(acs_agent_hello_parse(buf, len, &kind, &u32), -EBADMSG);
                        CHECK_INT(acs_agent_login_parse(buf, len, &lr, &u32), -EBADMSG);
                        CHECK_INT(acs_agent_status_parse(buf, len, &st, &u32), -EBADMSG);
                        CHECK_INT(acs_agent_change_parse(buf, len, &a), -EBADMSG);
                }
                if (len != 20)
                        CHECK_INT(acs_agent_progress_parse(buf, len, &pe, &a, &b), -EBADMSG);
        }
        CHECK_INT(acs_agent_sync_now_parse((const uint8_t *)"IN\0X", 4, &s), -EBADMSG);
        CHECK_INT(acs_agent_sync_now_parse((const uint8_t *)"", 0, &s), 0);
        CHECK(s == NULL);
        CHECK_INT(acs_agent_sync_now_parse(buf, ACS_AGENT_MAILBOX_MAX + 1, &s), -EBADMSG);
        unsigned accepted = 0;
        for (int i = 0; i < 200000; i++) {
                randombytes_buf(buf, 20);
                if (i & 1) /* small values, so that some are in range */
                        for (int j = 0; j < 20; j += 4)
                                buf[j] = buf[j + 1] = buf[j + 2] = 0, buf[j + 3] &= 7;
                if (acs_agent_hello_parse(buf, 8, &kind, &u32) == 0) {
                        CHECK(kind == ACS_AGENT_SYNCD || kind == ACS_AGENT_FS);
                        CHECK(u32 > 0 && u32 <= INT32_MAX);
                        accepted++;
                }
                if (acs_agent_login_parse(buf, 8, &lr, &u32) == 0) {
                        CHECK(lr <= ACS_AGENT_LOGIN_FAILED && u32 <= 255 && (lr == 0) == (u32 == 0));
                        accepted++;
                }
                if (acs_agent_progress_parse(buf, 20, &pe, &a, &b) == 0) {
                        CHECK(pe >= ACS_AGENT_PROGRESS_SYNCING && pe <= ACS_AGENT_PROGRESS_RECONNECT && a <= b);
                        accepted++;
                }
                if (acs_agent_status_parse(buf, 8, &st, &u32) == 0) {
                        CHECK(st >= ACS_AGENT_STATE_CONNECTING && st <= ACS_AGENT_STATE_STOPPING);
                        accepted++;
                }
        }
        CHECK(accepted > 0);
}

TEST(daemon_config_and_name)
{
        acs_bus_daemon_opts o = {.dir = "/run/acs/bus", .max_agents = 5000, .owner_uid = 0};
        _cleanup_free_ char *conf = NULL;
        CHECK_INT(acs_bus_daemon_config(&o, &conf), 0);
        CHECK(conf && strstr(conf, "<listen>unix:path=/run/acs/bus/bus.sock</listen>"));
        CHECK(conf && strstr(conf, "<auth>EXTERNAL</auth>"));
        CHECK(conf && strstr(conf, "<limit name=\"max_completed_connections\">5016</limit>"));
        CHECK(conf && strstr(conf, "<limit name=\"max_connections_per_user\">5008</limit>"));
        /* eavesdrop="true" only in deny rules */
        for (const char *l = conf; l && (l = strstr(l, "eavesdrop=\"true\"")); l++) {
                const char *start = l;
                while (start > conf && *start != '<')
                        start--;
                CHECK(strncmp(start, "<deny", 5) == 0);
        }
        acs_bus_daemon_opts bad = {.dir = "/tmp/a dir", .max_agents = 1};
        char *x = NULL;
        CHECK_INT(acs_bus_daemon_config(&bad, &x), -EINVAL);
        bad.dir = "relative";
        CHECK_INT(acs_bus_daemon_config(&bad, &x), -EINVAL);

        fixture f;
        CHECK(fx_setup(&f));
        if (f.bus) {
                CHECK(strncmp(f.address, "unix:path=", 10) == 0);
                CHECK(kill(f.daemon_pid, 0) == 0);
                /* a second root connection cannot take the name acsd owns */
                acs_bus *other = NULL;
                CHECK_INT(acs_bus_connect(f.address, &other), 0);
                if (other) {
                        CHECK_INT(acs_bus_request_name(other, ACS_BUS_NAME), -EEXIST);
                        char *owner = NULL;
                        CHECK_INT(acs_bus_name_owner(other, ACS_BUS_NAME, &owner), 0);
                        CHECK_STR(owner, acs_bus_unique_name(f.bus));
                        free(owner);
                        pid_t pid;
                        uid_t uid;
                        CHECK_INT(acs_bus_peer_creds(other, acs_bus_unique_name(f.bus), &pid, &uid), 0);
                        CHECK_INT(pid, getpid());
                        CHECK_INT(uid, 0);
                        CHECK_INT(acs_bus_peer_creds(other, ":1.999999", &pid, &uid), -ENOENT);
                        acs_bus_free(other);
                }
        }
        fx_teardown(&f);
        /* the daemon is gone: connecting fails */
        acs_bus *late = NULL;
        CHECK(acs_bus_connect(f.address ? "unix:path=/nonexistent/bus.sock" : "x", &late) < 0);
}

/* Agent child: hello, password request, login result, then waits for STOP. */
static int roundtrip_child(const char *address, int key_fd)
{
        acs_agent *a = NULL;
        int r = acs_agent_open(address, key_fd, ACS_AGENT_SYNCD, &a);
        if (r < 0)
                return 10;
        char *pw = NULL;
        size_t len = 0;
        r = acs_agent_get_password(a, 5000, &pw, &len);
        if (r < 0)
                return 11;
        bool same = len == strlen(PASSWORD) && memcmp(pw, PASSWORD, len) == 0 && pw[len] == 0;
        acs_secret_free(pw);
        if (!same)
                return 12;
        if (acs_agent_send_login_result(a, ACS_AGENT_LOGIN_OK, 0) < 0)
                return 13;
        int64_t end = mono_ms() + 5000;
        unsigned ev = 0;
        while (!(ev & ACS_AGENT_EV_STOP) && mono_ms() < end) {
                struct pollfd p = {.fd = acs_agent_fd(a), .events = acs_agent_poll_events(a)};
                poll(&p, 1, 100);
                if (acs_agent_dispatch(a, &ev) < 0)
                        return 14;
        }
        int ret = (ev & ACS_AGENT_EV_STOP) ? (acs_agent_rejected(a) ? 16 : 0) : 15;
        acs_agent_free(a);
        return ret;
}

TEST(signed_request_boxed_reply_roundtrip)
{
        fixture f;
        if (!fx_start(&f))
                return;
        acs_wire_pub cpub;
        int kfd = fx_child_keys(&f, 7, &cpub);
        pid_t pid = fork_as(AGENT_UID);
        if (pid == 0)
                _exit(roundtrip_child(f.address, kfd));
        close(kfd);
        /* HELLO: from a connection whose daemon-reported pid and uid are the child's */
        CHECK(fx_wait(&f, 5000));
        char agent_name[64] = "";
        if (f.nq) {
                snprintf(agent_name, sizeof(agent_name), "%s", f.q[0].sender);
                pid_t ppid;
                uid_t puid;
                CHECK_INT(acs_bus_peer_creds(f.bus, agent_name, &ppid, &puid), 0);
                CHECK_INT(ppid, pid);
                CHECK_INT(puid, AGENT_UID);
                acs_wire_msg m = {0};
                CHECK_INT(acs_wire_open(f.wire, f.q[0].msg, f.q[0].len, ACS_WIRE_MASK(ACS_WIRE_P_AGENT_HELLO), &m, NULL), 0);
                enum acs_agent_kind kind = 0;
                uint32_t hpid = 0;
                CHECK_INT(m.sender, 7);
                CHECK_INT(acs_agent_hello_parse(m.payload, m.len, &kind, &hpid), 0);
                CHECK_INT(kind, ACS_AGENT_SYNCD);
                CHECK_INT(hpid, pid);
                acs_wire_msg_clear(&m);
                fx_pop(&f);
        }
        /* CRED_REQUEST -> CRED (boxed) */
        CHECK(fx_wait(&f, 5000));
        if (f.nq) {
                CHECK_STR(f.q[0].sender, agent_name);
                acs_wire_msg m = {0};
                CHECK_INT(acs_wire_open(f.wire, f.q[0].msg, f.q[0].len, ACS_WIRE_MASK(ACS_WIRE_P_CRED_REQUEST), &m, NULL), 0);
                CHECK_INT(m.len, 0);
                acs_wire_msg_clear(&m);
                fx_pop(&f);
                uint8_t *payload = NULL;
                CHECK_INT(acs_agent_cred_pack(PASSWORD, strlen(PASSWORD), &payload), 0);
                _cleanup_free_ uint8_t *msg = NULL;
                size_t len = 0;
                CHECK_INT(acs_wire_seal(f.wire, 7, ACS_WIRE_P_CRED, payload, ACS_AGENT_CRED_SIZE, &msg, &len), 0);
                acs_secret_free(payload);
                /* the password is not in the bytes that cross the bus */
                CHECK(msg && !memmem(msg, len, PASSWORD, strlen(PASSWORD)));
                CHECK(msg && !memmem(msg, len, "s3cret", 6));
                CHECK_INT(acs_bus_send(f.bus, agent_name, msg, len), 0);
                CHECK_INT(acs_bus_flush(f.bus, 2000), 0);
        }
        /* LOGIN_RESULT ok -> STOP */
        CHECK(fx_wait(&f, 5000));
        if (f.nq) {
                acs_wire_msg m = {0};
                CHECK_INT(acs_wire_open(f.wire, f.q[0].msg, f.q[0].len, ACS_WIRE_MASK(ACS_WIRE_P_LOGIN_RESULT), &m, NULL), 0);
                enum acs_agent_login res = 99;
                uint32_t st = 99;
                CHECK_INT(acs_agent_login_parse(m.payload, m.len, &res, &st), 0);
                CHECK_INT(res, ACS_AGENT_LOGIN_OK);
                CHECK_INT(st, 0);
                acs_wire_msg_clear(&m);
                fx_pop(&f);
        }
        _cleanup_free_ uint8_t *stop = NULL;
        size_t slen = 0;
        CHECK_INT(acs_wire_seal(f.wire, 7, ACS_WIRE_P_STOP, NULL, 0, &stop, &slen), 0);
        CHECK_INT(acs_bus_send(f.bus, agent_name, stop, slen), 0);
        CHECK_INT(acs_bus_flush(f.bus, 2000), 0);
        CHECK_INT(wait_child(pid, 10000), 0);
        /* the acsd side learns that the agent left the bus */
        int64_t end = mono_ms() + 3000;
        while (f.ngone == 0 && mono_ms() < end)
                acs_bus_wait(f.bus, 100);
        CHECK(f.ngone >= 1);
        if (f.ngone)
                CHECK_STR(f.gone[0], agent_name);
        fx_teardown(&f);
}

/*
 * Agent child for the rejection test: reports "<rejected> <events> <mailbox>\n" on out
 * after every dispatch that changed something, until STOP.
 */
static int reporting_child(const char *address, int key_fd, int out)
{
        acs_agent *a = NULL;
        if (acs_agent_open(address, key_fd, ACS_AGENT_FS, &a) < 0)
                return 10;
        uint64_t last_rej = 0;
        int64_t end = mono_ms() + 20000;
        while (mono_ms() < end) {
                struct pollfd p = {.fd = acs_agent_fd(a), .events = acs_agent_poll_events(a)};
                poll(&p, 1, 100);
                unsigned ev = 0;
                if (acs_agent_dispatch(a, &ev) < 0)
                        return 11;
                if (ev || acs_agent_rejected(a) != last_rej) {
                        last_rej = acs_agent_rejected(a);
                        char *mb = (ev & ACS_AGENT_EV_SYNC_NOW) ? acs_agent_take_sync_mailbox(a) : NULL;
                        char line[256];
                        int n = snprintf(line, sizeof(line), "%llu %u %s %s\n", (unsigned long long)last_rej, ev,
                                         mb ? mb : "-", acs_agent_last_error(a) ? acs_agent_last_error(a) : "-");
                        free(mb);
                        if (write(out, line, (size_t)n) != n)
                                return 12;
                        if (ev & ACS_AGENT_EV_STOP) {
                                acs_agent_free(a);
                                return 0;
                        }
                }
        }
        return 13;
}

/* Reads one report line from the agent (up to 5 s). */
static bool read_report(int fd, unsigned *rej, unsigned *ev, char *mb, size_t mbsize, char *why, size_t whysize)
{
        char line[256];
        size_t n = 0;
        int64_t end = mono_ms() + 5000;
        while (n < sizeof(line) - 1) {
                struct pollfd p = {.fd = fd, .events = POLLIN};
                if (poll(&p, 1, (int)(end - mono_ms())) <= 0)
                        return false;
                if (read(fd, line + n, 1) != 1)
                        return false;
                if (line[n] == '\n')
                        break;
                n++;
        }
        line[n] = 0;
        char m[128], w[128];
        if (sscanf(line, "%u %u %127s %127[^\n]", rej, ev, m, w) != 4)
                return false;
        snprintf(mb, mbsize, "%s", m);
        snprintf(why, whysize, "%s", w);
        return true;
}

static void send_bytes(acs_bus *b, const char *to, const uint8_t *msg, size_t len)
{
        CHECK_INT(acs_bus_send(b, to, msg, len), 0);
        CHECK_INT(acs_bus_flush(b, 2000), 0);
}

static uint8_t *seal_sync(fixture *f, uint32_t to, const char *mailbox, size_t *len)
{
        uint8_t *msg = NULL;
        CHECK_INT(acs_wire_seal(f->wire, to, ACS_WIRE_P_SYNC_NOW, mailbox, strlen(mailbox), &msg, len), 0);
        return msg;
}

#define EXPECT(want_rej, want_ev, want_mb)                                                           \
        do {                                                                                         \
                unsigned rej_ = 0, ev_ = 0;                                                          \
                char mb_[128] = "", why_[128] = "";                                                  \
                CHECK(read_report(rep[0], &rej_, &ev_, mb_, sizeof(mb_), why_, sizeof(why_)));       \
                CHECK_INT(rej_, want_rej);                                                           \
                CHECK_INT(ev_, want_ev);                                                             \
                CHECK_STR(mb_, want_mb);                                                             \
                printf("#   agent: rejected=%u events=%u mailbox=%s last reason: %s\n", rej_, ev_, mb_, why_); \
        } while (0)

TEST(agent_rejects_replayed_flipped_unsigned_wrong_sender_wrong_recipient)
{
        fixture f;
        if (!fx_start(&f))
                return;
        acs_wire_pub p1, p2;
        int kfd = fx_child_keys(&f, 1, &p1);
        int kfd2 = fx_child_keys(&f, 2, &p2); /* a second child, never started: messages for it */
        close(kfd2);
        int rep[2];
        CHECK(pipe2(rep, O_CLOEXEC) == 0);
        pid_t pid = fork_as(AGENT_UID);
        if (pid == 0) {
                close(rep[0]);
                _exit(reporting_child(f.address, kfd, rep[1]));
        }
        close(kfd);
        close(rep[1]);
        CHECK(fx_wait(&f, 5000)); /* its HELLO */
        char agent[64] = "";
        if (f.nq) {
                snprintf(agent, sizeof(agent), "%s", f.q[0].sender);
                fx_pop(&f);
        }
        acs_bus *rogue = NULL; /* root, connected, but not the owner of acsd's name */
        CHECK_INT(acs_bus_connect(f.address, &rogue), 0);
        size_t len;

        /* genuine */
        _cleanup_free_ uint8_t *m1 = seal_sync(&f, 1, "INBOX", &len);
        size_t len1 = len;
        send_bytes(f.bus, agent, m1, len1);
        EXPECT(0, ACS_AGENT_EV_SYNC_NOW, "INBOX");
        /* replayed */
        send_bytes(f.bus, agent, m1, len1);
        EXPECT(1, 0, "-");
        /* bit-flipped (one bit of the payload), then the same message intact still opens */
        _cleanup_free_ uint8_t *m2 = seal_sync(&f, 1, "Archive", &len);
        size_t len2 = len;
        m2[ACS_WIRE_HEADER_SIZE + 2] ^= 0x04;
        send_bytes(f.bus, agent, m2, len2);
        EXPECT(2, 0, "-");
        m2[ACS_WIRE_HEADER_SIZE + 2] ^= 0x04;
        send_bytes(f.bus, agent, m2, len2);
        EXPECT(2, ACS_AGENT_EV_SYNC_NOW, "Archive");
        /* unsigned: signature zeroed */
        _cleanup_free_ uint8_t *m3 = seal_sync(&f, 1, "Sent", &len);
        memset(m3 + len - ACS_WIRE_SIG_SIZE, 0, ACS_WIRE_SIG_SIZE);
        send_bytes(f.bus, agent, m3, len);
        EXPECT(3, 0, "-");
        /* wrong sender: a genuine acsd message sent by another connection */
        _cleanup_free_ uint8_t *m4 = seal_sync(&f, 1, "Drafts", &len);
        size_t len4 = len;
        if (rogue)
                send_bytes(rogue, agent, m4, len4);
        EXPECT(4, 0, "-");
        send_bytes(f.bus, agent, m4, len4); /* from acsd's connection it is fine */
        EXPECT(4, ACS_AGENT_EV_SYNC_NOW, "Drafts");
        /* wrong recipient: sealed for child 2 */
        _cleanup_free_ uint8_t *m5 = seal_sync(&f, 2, "Junk", &len);
        send_bytes(f.bus, agent, m5, len);
        EXPECT(5, 0, "-");
        /* a CRED nobody asked for */
        uint8_t *cp = NULL;
        CHECK_INT(acs_agent_cred_pack("x", 1, &cp), 0);
        _cleanup_free_ uint8_t *m6 = NULL;
        CHECK_INT(acs_wire_seal(f.wire, 1, ACS_WIRE_P_CRED, cp, ACS_AGENT_CRED_SIZE, &m6, &len), 0);
        acs_secret_free(cp);
        send_bytes(f.bus, agent, m6, len);
        EXPECT(6, 0, "-");
        /* truncated and garbage */
        _cleanup_free_ uint8_t *m7 = seal_sync(&f, 1, "Trash", &len);
        send_bytes(f.bus, agent, m7, len - 1);
        EXPECT(7, 0, "-");
        /* STOP ends it */
        _cleanup_free_ uint8_t *stop = NULL;
        CHECK_INT(acs_wire_seal(f.wire, 1, ACS_WIRE_P_STOP, NULL, 0, &stop, &len), 0);
        send_bytes(f.bus, agent, stop, len);
        EXPECT(7, ACS_AGENT_EV_STOP, "-");
        CHECK_INT(wait_child(pid, 5000), 0);
        close(rep[0]);
        acs_bus_free(rogue);
        fx_teardown(&f);
}

TEST(acsd_side_rejects_replay_and_binds_sender)
{
        /* what acsd does with an agent's message: open it, and check the connection it came from */
        fixture f;
        if (!fx_start(&f))
                return;
        acs_wire_pub p1;
        int kfd = fx_child_keys(&f, 3, &p1);
        int go[2];
        CHECK(pipe2(go, O_CLOEXEC) == 0);
        pid_t pid = fork_as(AGENT_UID);
        if (pid == 0) {
                close(go[1]);
                acs_agent *a = NULL;
                if (acs_agent_open(f.address, kfd, ACS_AGENT_SYNCD, &a) < 0)
                        _exit(10);
                if (acs_agent_send_status(a, ACS_AGENT_STATE_ONLINE, 4) < 0)
                        _exit(11);
                char c;
                (void)!read(go[0], &c, 1); /* wait until told to go */
                acs_agent_free(a);
                _exit(0);
        }
        close(kfd);
        close(go[0]);
        CHECK(fx_wait(&f, 5000));
        int64_t end = mono_ms() + 3000;
        while (f.nq < 2 && mono_ms() < end)
                acs_bus_wait(f.bus, 100);
        CHECK_INT(f.nq, 2);
        if (f.nq == 2) {
                acs_wire_msg m = {0};
                uint64_t any = ACS_WIRE_MASK(ACS_WIRE_P_AGENT_HELLO) | ACS_WIRE_MASK(ACS_WIRE_P_STATUS);
                CHECK_INT(acs_wire_open(f.wire, f.q[0].msg, f.q[0].len, any, &m, NULL), 0);
                acs_wire_msg_clear(&m);
                CHECK_INT(acs_wire_open(f.wire, f.q[1].msg, f.q[1].len, any, &m, NULL), 0);
                enum acs_agent_state st = 0;
                uint32_t pending = 0;
                CHECK_INT(acs_agent_status_parse(m.payload, m.len, &st, &pending), 0);
                CHECK_INT(st, ACS_AGENT_STATE_ONLINE);
                CHECK_INT(pending, 4);
                acs_wire_msg_clear(&m);
                /* replayed to acsd: stale */
                CHECK_INT(acs_wire_open(f.wire, f.q[1].msg, f.q[1].len, any, &m, NULL), -ESTALE);
                /* bit flipped: signature fails */
                f.q[1].msg[20] ^= 1;
                CHECK_INT(acs_wire_open(f.wire, f.q[1].msg, f.q[1].len, any, &m, NULL), -EKEYREJECTED);
                /* a purpose acsd does not expect now */
                f.q[1].msg[20] ^= 1;
                CHECK_INT(acs_wire_open(f.wire, f.q[1].msg, f.q[1].len, ACS_WIRE_MASK(ACS_WIRE_P_CRED_REQUEST), &m, NULL),
                          -EPERM);
                /* malformed payloads are refused by the parsers */
                enum acs_agent_kind k;
                uint32_t pp;
                uint8_t bad[8] = {0, 0, 0, 9, 0, 0, 0, 1};
                CHECK_INT(acs_agent_hello_parse(bad, 8, &k, &pp), -EBADMSG);
                CHECK_INT(acs_agent_hello_parse(bad, 7, &k, &pp), -EBADMSG);
                enum acs_agent_login lr;
                uint8_t badl[8] = {0, 0, 0, 0, 0, 0, 0, 77}; /* "ok" with an error status */
                CHECK_INT(acs_agent_login_parse(badl, 8, &lr, &pp), -EBADMSG);
                char *pw = NULL;
                size_t pwlen;
                uint8_t badc[ACS_AGENT_CRED_SIZE] = {0, 2, 'a', 'b', 0, 1};
                CHECK_INT(acs_agent_cred_parse(badc, sizeof(badc), &pw, &pwlen), -EBADMSG);
                /* the sender binding: the daemon-stamped name maps to the child's pid and uid */
                pid_t ppid;
                uid_t puid;
                CHECK_INT(acs_bus_peer_creds(f.bus, f.q[1].sender, &ppid, &puid), 0);
                CHECK_INT(ppid, pid);
                CHECK_INT(puid, AGENT_UID);
        }
        (void)!write(go[1], "x", 1);
        close(go[1]);
        CHECK_INT(wait_child(pid, 5000), 0);
        fx_teardown(&f);
}

/* Raw libdbus helpers for what the acs API never does (and the policy must refuse). */
static DBusConnection *raw_connect(const char *address)
{
        DBusConnection *c = dbus_connection_open_private(address, NULL);
        if (c && !dbus_bus_register(c, NULL)) {
                dbus_connection_close(c);
                dbus_connection_unref(c);
                return NULL;
        }
        return c;
}

/* A method call expecting a reply; returns the error name ("" on success), static buffer. */
static const char *raw_call(DBusConnection *c, const char *dest, const char *path, const char *iface,
                            const char *member, const char *arg)
{
        static char name[128];
        DBusMessage *m = dbus_message_new_method_call(dest, path, iface, member);
        if (arg)
                dbus_message_append_args(m, DBUS_TYPE_STRING, &arg, DBUS_TYPE_INVALID);
        DBusError e;
        dbus_error_init(&e);
        DBusMessage *r = dbus_connection_send_with_reply_and_block(c, m, 2000, &e);
        dbus_message_unref(m);
        snprintf(name, sizeof(name), "%s", r ? "" : e.name ? e.name : "?");
        if (r)
                dbus_message_unref(r);
        dbus_error_free(&e);
        return name;
}

static void raw_close(DBusConnection *c)
{
        dbus_connection_close(c);
        dbus_connection_unref(c);
}

/* Agent B: counts what reaches it, from acsd and from anyone else; exit 0 only if all came from acsd. */
struct victim { char acsd[64]; int from_acsd, from_others; };

static void victim_on_message(void *ud, const char *sender, const uint8_t *msg, size_t len)
{
        struct victim *v = ud;
        if (!strcmp(sender, v->acsd))
                v->from_acsd++;
        else
                v->from_others++;
}

static int victim_child(const char *address, int name_out, int go_in)
{
        acs_bus *b = NULL;
        if (acs_bus_connect(address, &b) < 0)
                return 10;
        struct victim v = {0};
        char *owner = NULL;
        if (acs_bus_name_owner(b, ACS_BUS_NAME, &owner) < 0)
                return 11;
        snprintf(v.acsd, sizeof(v.acsd), "%s", owner);
        free(owner);
        acs_bus_set_handlers(b, victim_on_message, NULL, &v);
        char line[64];
        int n = snprintf(line, sizeof(line), "%s\n", acs_bus_unique_name(b));
        if (write(name_out, line, (size_t)n) != n)
                return 12;
        struct pollfd p[2] = {{.fd = acs_bus_fd(b), .events = POLLIN}, {.fd = go_in, .events = POLLIN}};
        for (;;) {
                poll(p, 2, 100);
                if (acs_bus_dispatch(b) < 0)
                        return 13;
                if (p[1].revents)
                        break;
        }
        acs_bus_free(b);
        if (v.from_others)
                printf("# victim got %d message(s) from other agents\n", v.from_others);
        return v.from_others ? 14 : v.from_acsd ? 0 : 15;
}

static int attacker_child(const char *address, const char *victim)
{
        int fails = 0;
        acs_bus *b = NULL;
        if (acs_bus_connect(address, &b) < 0)
                return 100;
        /* no well-known name for an agent: not acsd's, not any other */
        if (acs_bus_request_name(b, ACS_BUS_NAME) != -EACCES)
                fails |= 1;
        if (acs_bus_request_name(b, "org.acs.Evil") != -EACCES)
                fails |= 2;
        DBusConnection *c = raw_connect(address);
        if (!c)
                return 101;
        /* a sealed-message call to another agent: refused by the daemon */
        if (strcmp(raw_call(c, victim, ACS_BUS_PATH, ACS_BUS_INTERFACE, ACS_BUS_MEMBER, NULL), DBUS_ERROR_ACCESS_DENIED))
                fails |= 4;
        /* any other call to it too */
        if (strcmp(raw_call(c, victim, "/", "org.freedesktop.DBus.Peer", "Ping", NULL), DBUS_ERROR_ACCESS_DENIED))
                fails |= 8;
        /* becoming a monitor (seeing everything) is root's only */
        if (!strcmp(raw_call(c, DBUS_SERVICE_DBUS, DBUS_PATH_DBUS, "org.freedesktop.DBus.Monitoring", "BecomeMonitor", NULL), ""))
                fails |= 16;
        /* a sealed-message-shaped call to acsd's name is allowed (the parent counts it) */
        uint8_t hi[3] = {'h', 'i', '!'};
        if (acs_bus_send(b, ACS_BUS_NAME, hi, sizeof(hi)) < 0 || acs_bus_flush(b, 1000) < 0)
                fails |= 32;
        /* eavesdropping match rule: may be accepted, but must deliver nothing (checked by the parent) */
        DBusError e;
        dbus_error_init(&e);
        dbus_bus_add_match(c, "type='method_call',eavesdrop='true'", &e);
        dbus_error_free(&e);
        /* a broadcast signal: refused */
        DBusMessage *sig = dbus_message_new_signal("/x", "org.acs.Evil", "Boo");
        dbus_connection_send(c, sig, NULL);
        dbus_message_unref(sig);
        dbus_connection_flush(c);
        /* a no-reply message to the victim (the acs API's way): silently refused */
        uint8_t junk[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        acs_bus_send(b, victim, junk, sizeof(junk));
        acs_bus_flush(b, 1000);
        /* anything eavesdropped in the next 300 ms (acsd sends to the victim meanwhile) */
        int64_t end = mono_ms() + 600;
        int seen = 0;
        while (mono_ms() < end) {
                dbus_connection_read_write(c, 50);
                DBusMessage *m;
                while ((m = dbus_connection_pop_message(c))) {
                        if (dbus_message_get_type(m) == DBUS_MESSAGE_TYPE_METHOD_CALL)
                                seen++;
                        dbus_message_unref(m);
                }
        }
        if (seen)
                fails |= 64;
        raw_close(c);
        acs_bus_free(b);
        return fails;
}

TEST(policy_agent_cannot_reach_another_agent_or_eavesdrop)
{
        fixture f;
        if (!fx_start(&f))
                return;
        int names[2], go[2];
        CHECK(pipe2(names, O_CLOEXEC) == 0 && pipe2(go, O_CLOEXEC) == 0);
        pid_t victim = fork_as(AGENT2_UID);
        if (victim == 0)
                _exit(victim_child(f.address, names[1], go[0]));
        close(names[1]);
        char vname[64] = "";
        size_t n = 0;
        while (n < sizeof(vname) - 1 && read(names[0], vname + n, 1) == 1 && vname[n] != '\n')
                n++;
        vname[n] = 0;
        close(names[0]);
        CHECK(vname[0] == ':');
        pid_t attacker = fork_as(AGENT_UID);
        if (attacker == 0)
                _exit(attacker_child(f.address, vname));
        /* acsd may send to an agent meanwhile; the attacker must not see it */
        int64_t end = mono_ms() + 1500;
        while (mono_ms() < end) {
                uint8_t junk[4] = {9, 9, 9, 9};
                acs_bus_send(f.bus, vname, junk, sizeof(junk));
                acs_bus_wait(f.bus, 100);
        }
        int st = wait_child(attacker, 10000);
        if (st)
                printf("# attacker check bits failed: %d\n", st);
        CHECK_INT(st, 0);
        (void)!write(go[1], "x", 1);
        CHECK_INT(wait_child(victim, 10000), 0);
        close(go[0]);
        close(go[1]);
        /* acsd got the attacker's calls to its name, nothing else */
        int got = 0;
        while (f.nq) {
                got += f.q[0].len == 3 && !memcmp(f.q[0].msg, "hi!", 3);
                fx_pop(&f);
        }
        CHECK_INT(got, 1);
        fx_teardown(&f);
}

TEST(root_monitor_allowed)
{
        fixture f;
        if (!fx_start(&f))
                return;
        DBusConnection *c = raw_connect(f.address);
        CHECK(c != NULL);
        if (c) {
                DBusMessage *m = dbus_message_new_method_call(DBUS_SERVICE_DBUS, DBUS_PATH_DBUS,
                                                              "org.freedesktop.DBus.Monitoring", "BecomeMonitor");
                DBusMessageIter it, arr;
                dbus_message_iter_init_append(m, &it);
                dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "s", &arr);
                dbus_message_iter_close_container(&it, &arr);
                uint32_t flags = 0;
                dbus_message_append_args(m, DBUS_TYPE_UINT32, &flags, DBUS_TYPE_INVALID);
                DBusError e;
                dbus_error_init(&e);
                DBusMessage *r = dbus_connection_send_with_reply_and_block(c, m, 2000, &e);
                if (!r)
                        printf("# BecomeMonitor: %s\n", e.message ? e.message : "?");
                CHECK(r != NULL);
                if (r)
                        dbus_message_unref(r);
                dbus_error_free(&e);
                dbus_message_unref(m);
                raw_close(c);
        }
        fx_teardown(&f);
}

static void count_message(void *ud, const char *sender, const uint8_t *msg, size_t len)
{
        (*(unsigned *)ud)++;
}

/* The value of field key (such as "VmRSS:") in /proc/PID/status, into buf; false if absent. */
static bool proc_status(pid_t pid, const char *key, char *buf, size_t size)
{
        char path[64], line[256];
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        FILE *st = fopen(path, "r");
        bool found = false;
        while (st && !found && fgets(line, sizeof(line), st))
                if (!strncmp(line, key, strlen(key))) {
                        snprintf(buf, size, "%s", line + strlen(key));
                        found = true;
                }
        if (st)
                fclose(st);
        return found;
}

static bool under_valgrind(void)
{
        const char *p = getenv("LD_PRELOAD");
        return p && strstr(p, "vgpreload");
}

TEST(thousands_of_agents_and_the_connection_limit)
{
        /* max_agents agent connections (root here: the per-uid limit is max_agents + 8),
         * each sends one message that acsd receives; the bus takes max_agents + 16
         * connections in all and refuses the next one. */
        unsigned n = under_valgrind() ? 300 : 2000;
        fixture f;
        if (acs_wire_init() < 0 || geteuid() != 0) {
                CHECK(false);
                return;
        }
        CHECK(fx_dir(&f));
        acs_bus_daemon_opts o = {.dir = f.dir, .max_agents = n, .max_per_uid = n + 64, .owner_uid = 0};
        CHECK_INT(acs_bus_daemon_start(&o, &f.address, &f.daemon_pid), 0);
        CHECK_INT(acs_bus_connect(f.address, &f.bus), 0);
        if (!f.bus) {
                fx_teardown(&f);
                return;
        }
        CHECK_INT(acs_bus_request_name(f.bus, ACS_BUS_NAME), 0);
        unsigned got = 0;
        acs_bus_set_handlers(f.bus, count_message, NULL, &got);
        acs_bus **agents = calloc(n + 32, sizeof(*agents));
        int64_t t0 = mono_ms();
        unsigned connected = 0;
        int refused = 0;
        for (unsigned i = 0; i < n + 32; i++) {
                int r = acs_bus_connect(f.address, &agents[i]);
                if (r < 0) {
                        refused = r;
                        break;
                }
                connected++;
        }
        int64_t t1 = mono_ms();
        /* acsd's own connection counts: n + 16 in all */
        CHECK_INT(connected, n + 15);
        CHECK(refused < 0);
        for (unsigned i = 0; i < n && i < connected; i++) {
                uint8_t b[4] = {(uint8_t)(i >> 24), (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i};
                CHECK_INT(acs_bus_send(agents[i], ACS_BUS_NAME, b, sizeof(b)), 0);
                CHECK_INT(acs_bus_flush(agents[i], 5000), 0);
        }
        /* count what arrives at acsd */
        int64_t end = mono_ms() + 60000;
        while (got < n && mono_ms() < end)
                acs_bus_wait(f.bus, 100);
        int64_t t2 = mono_ms();
        CHECK_INT(got, n);
        char v[256];
        long rss_kb = proc_status(f.daemon_pid, "VmRSS:", v, sizeof(v)) ? atol(v) : -1;
        printf("# %u agent connections in %lld ms (refused after %u: %s), %u messages to acsd in %lld ms, "
               "dbus-daemon RSS %ld KiB\n",
               connected, (long long)(t1 - t0), connected, strerror(-refused), got, (long long)(t2 - t1), rss_kb);
        for (unsigned i = 0; i < n + 32; i++)
                acs_bus_free(agents[i]);
        free(agents);
        fx_teardown(&f);
}

TEST(connections_per_uid_capped)
{
        /* one agent uid cannot take the bus's connections for itself: max_per_uid (64 + 8) */
        fixture f;
        if (!fx_start(&f))
                return;
        pid_t pid = fork_as(AGENT_UID);
        if (pid == 0) {
                acs_bus *b[100] = {0};
                unsigned ok = 0;
                for (unsigned i = 0; i < 100; i++)
                        if (acs_bus_connect(f.address, &b[i]) == 0)
                                ok++;
                        else
                                break;
                printf("# uid %d got %u connections\n", AGENT_UID, ok);
                fflush(stdout);
                _exit(ok == 72 ? 0 : 1);
        }
        CHECK_INT(wait_child(pid, 60000), 0);
        /* others still get in */
        acs_bus *other = NULL;
        CHECK_INT(acs_bus_connect(f.address, &other), 0);
        acs_bus_free(other);
        fx_teardown(&f);
}

TEST(daemon_drops_to_its_user)
{
        /* with daemon_user the daemon runs as that user, and everything still works */
        if (!getpwnam("messagebus")) {
                printf("# no user messagebus (Debian's dbus package makes it); FAILING\n");
                CHECK(false);
                return;
        }
        fixture f;
        CHECK(acs_wire_init() == 0);
        CHECK(fx_dir(&f));
        acs_bus_daemon_opts o = {.dir = f.dir, .max_agents = 8, .owner_uid = 0, .daemon_user = "messagebus"};
        _cleanup_free_ char *conf = NULL;
        CHECK_INT(acs_bus_daemon_config(&o, &conf), 0);
        CHECK(conf && strstr(conf, "<user>messagebus</user>"));
        CHECK_INT(acs_bus_daemon_start(&o, &f.address, &f.daemon_pid), 0);
        char v[256];
        unsigned ruid = 0, euid = 0;
        if (proc_status(f.daemon_pid, "Uid:", v, sizeof(v)))
                sscanf(v, "%u %u", &ruid, &euid);
        CHECK_INT(euid, getpwnam("messagebus")->pw_uid);
        CHECK_INT(ruid, getpwnam("messagebus")->pw_uid);
        CHECK_INT(acs_bus_connect(f.address, &f.bus), 0);
        if (f.bus)
                CHECK_INT(acs_bus_request_name(f.bus, ACS_BUS_NAME), 0);
        acs_bus_daemon_opts bad = {.dir = f.dir, .max_agents = 8, .daemon_user = "a<b"};
        char *x = NULL;
        CHECK_INT(acs_bus_daemon_config(&bad, &x), -EINVAL);
        fx_teardown(&f);
}

TEST(agent_refuses_a_stranger_owning_acsds_name)
{
        /* a bus where uid nobody may own acsd's name (as on a bus acsd did not configure):
         * an agent whose parent is not that owner, and which is not root's, refuses it */
        fixture f;
        CHECK_INT(acs_wire_init(), 0);
        CHECK(fx_dir(&f));
        acs_bus_daemon_opts o = {.dir = f.dir, .max_agents = 8, .owner_uid = AGENT_UID};
        CHECK_INT(acs_bus_daemon_start(&o, &f.address, &f.daemon_pid), 0);
        acs_wire_keys *k = NULL;
        CHECK_INT(acs_wire_keys_new(&k), 0);
        acs_wire_keys_public(k, &f.pub);
        CHECK_INT(acs_wire_new(ACS_WIRE_ID_ACSD, &k, &f.wire), 0);
        int ready[2], done[2];
        CHECK(pipe2(ready, O_CLOEXEC) == 0 && pipe2(done, O_CLOEXEC) == 0);
        pid_t squatter = fork_as(AGENT_UID);
        if (squatter == 0) {
                acs_bus *b = NULL;
                if (acs_bus_connect(f.address, &b) < 0 || acs_bus_request_name(b, ACS_BUS_NAME) < 0)
                        _exit(10);
                (void)!write(ready[1], "x", 1);
                char c;
                (void)!read(done[0], &c, 1);
                acs_bus_free(b);
                _exit(0);
        }
        char c = 0;
        CHECK(read(ready[0], &c, 1) == 1);
        acs_wire_pub cpub;
        int kfd = fx_child_keys(&f, 5, &cpub);
        pid_t agent = fork_as(AGENT2_UID);
        if (agent == 0) {
                acs_agent *a = NULL;
                int r = acs_agent_open(f.address, kfd, ACS_AGENT_SYNCD, &a);
                _exit(r == -EPERM ? 0 : 1);
        }
        close(kfd);
        CHECK_INT(wait_child(agent, 20000), 0);
        (void)!write(done[1], "x", 1);
        CHECK_INT(wait_child(squatter, 20000), 0);
        close(ready[0]);
        close(ready[1]);
        close(done[0]);
        close(done[1]);
        fx_teardown(&f);
}

TEST(unknown_uid_refused)
{
        /* dbus-daemon denies a uid without a passwd entry before any <allow user> rule:
         * acsd's agent uids must exist (docs/credentials.md). 65533 is unused here. */
        fixture f;
        if (!fx_start(&f))
                return;
        CHECK(getpwuid(65533) == NULL);
        pid_t pid = fork_as(65533);
        if (pid == 0) {
                acs_bus *b = NULL;
                int r = acs_bus_connect(f.address, &b);
                _exit(r == -EACCES ? 0 : r == 0 ? 1 : 2);
        }
        CHECK_INT(wait_child(pid, 30000), 0);
        fx_teardown(&f);
}

TEST(shutdown)
{
        /* last: libdbus's global state, so that valgrind sees no leak */
        acs_bus_shutdown();
        CHECK(true);
}

TEST_MAIN()
