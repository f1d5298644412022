/* SPDX-License-Identifier: MIT */
/* Test driver playing acsd's part on its own bus: starts the daemon, hands keys to one agent, answers its password request, reports events as JSON lines. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sodium.h>

#include "acs/agent.h"
#include "acs/bus.h"
#include "acs/util.h"
#include "acs/wire.h"

/*
 * usage: acs-bus-driver --dir DIR --password-fd N [--agent-uid UID] [--agent-gid GID]
 *                       [--daemon-user USER] [--hold-cred]
 *                       -- PROGRAM ARGS...
 * Prints {"event":"bus","address":...,"daemon_pid":N}, then waits for a line "start" on
 * stdin (so a monitor can attach first), runs PROGRAM --bus ADDRESS --key-fd 3 ARGS as
 * UID (the two options right after PROGRAM), and prints one JSON line per message from it (hello, cred_request, login_result,
 * status, progress, change) or per rejected one ("rejected" with the reason). stdin
 * lines: "stop" (sends STOP), "sync [MAILBOX]" (sends SYNC_NOW), "cred" (sends CRED; with
 * --hold-cred a CRED_REQUEST is not answered until then). When the agent exits:
 * {"event":"exit","status":N}; then the daemon is stopped and the driver exits 0.
 * Test code only (tests/integration/test_bus.py), until acsd does this for real.
 */

#define CHILD_ID 1

static acs_wire *wire;
static acs_bus *bus;
static pid_t child;
static char agent_name[128];
static char *password;
static size_t password_len;
static unsigned cred_sent;
static void out(const char *fmt, ...) ACS_PRINTF(1, 2);
static void send_to_agent(enum acs_wire_purpose p, const void *payload, size_t len);
static void out(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
        fflush(stdout);
}

static void send_to_agent(enum acs_wire_purpose p, const void *payload, size_t len)
{
        _cleanup_free_ uint8_t *msg = NULL;
        size_t mlen = 0;
        int r = acs_wire_seal(wire, CHILD_ID, p, payload, len, &msg, &mlen);
        if (r == 0 && agent_name[0])
                r = acs_bus_send(bus, agent_name, msg, mlen);
        if (r == 0)
                r = acs_bus_flush(bus, 2000);
        if (r < 0 || !agent_name[0])
                out("{\"event\":\"send_failed\",\"purpose\":\"%s\",\"error\":\"%s\"}", acs_wire_purpose_name(p),
                    agent_name[0] ? strerror(-r) : "no agent yet");
}

/* Prints a "rejected" event with the reason. */
static void rejected(const char *fmt, ...) ACS_PRINTF(1, 2);
static void rejected(const char *fmt, ...)
{
        char why[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        out("{\"event\":\"rejected\",\"reason\":\"%s\"}", why);
}

/* Reports a payload its parser refused ("bad WHAT"); true when it parsed. */
static bool parsed(int r, const char *what)
{
        if (r < 0)
                rejected("bad %s", what);
        return r >= 0;
}

static bool hold_cred; /* answer CRED_REQUEST only on a "cred" line */

static void send_cred(void)
{
        uint8_t *payload = NULL;
        if (acs_agent_cred_pack(password, password_len, &payload) == 0) {
                send_to_agent(ACS_WIRE_P_CRED, payload, ACS_AGENT_CRED_SIZE);
                acs_secret_free(payload);
                cred_sent++;
                out("{\"event\":\"cred_sent\",\"count\":%u}", cred_sent);
        }
}

static void on_message(void *ud, const char *sender, const uint8_t *msg, size_t len)
{
        uint64_t accept = ACS_WIRE_MASK(ACS_WIRE_P_AGENT_HELLO) | ACS_WIRE_MASK(ACS_WIRE_P_CRED_REQUEST) |
                          ACS_WIRE_MASK(ACS_WIRE_P_LOGIN_RESULT) | ACS_WIRE_MASK(ACS_WIRE_P_PROGRESS) |
                          ACS_WIRE_MASK(ACS_WIRE_P_CHANGE) | ACS_WIRE_MASK(ACS_WIRE_P_STATUS);
        if (agent_name[0] && strcmp(sender, agent_name) != 0) {
                rejected("wrong sender");
                return;
        }
        if (!agent_name[0]) {
                /* the first message binds the sender, after checking it is our child */
                pid_t pid;
                uid_t uid;
                int r = acs_bus_peer_creds(bus, sender, &pid, &uid);
                if (r < 0 || pid != child) {
                        rejected("not our child (pid %d)", r < 0 ? -1 : (int)pid);
                        return;
                }
                accept = ACS_WIRE_MASK(ACS_WIRE_P_AGENT_HELLO);
        }
        acs_wire_msg m = {0};
        const char *err = NULL;
        int r = acs_wire_open(wire, msg, len, accept, &m, &err);
        if (r < 0) {
                rejected("%s", err ? err : strerror(-r));
                return;
        }
        switch (m.purpose) {
        case ACS_WIRE_P_AGENT_HELLO: {
                enum acs_agent_kind kind;
                uint32_t pid;
                if (acs_agent_hello_parse(m.payload, m.len, &kind, &pid) < 0 || pid != (uint32_t)child) {
                        rejected("bad hello");
                        break;
                }
                snprintf(agent_name, sizeof(agent_name), "%s", sender);
                out("{\"event\":\"hello\",\"kind\":%d,\"pid\":%u,\"name\":\"%s\"}", (int)kind, pid, sender);
                break;
        }
        case ACS_WIRE_P_CRED_REQUEST: {
                out("{\"event\":\"cred_request\"}");
                if (!hold_cred)
                        send_cred();
                break;
        }
        case ACS_WIRE_P_LOGIN_RESULT: {
                enum acs_agent_login res;
                uint32_t st;
                if (parsed(acs_agent_login_parse(m.payload, m.len, &res, &st), "login result"))
                        out("{\"event\":\"login_result\",\"result\":%d,\"status\":%u}", (int)res, st);
                break;
        }
        case ACS_WIRE_P_STATUS: {
                enum acs_agent_state st;
                uint32_t pending;
                if (parsed(acs_agent_status_parse(m.payload, m.len, &st, &pending), "status"))
                        out("{\"event\":\"status\",\"state\":%d,\"pending\":%u}", (int)st, pending);
                break;
        }
        case ACS_WIRE_P_PROGRESS: {
                enum acs_agent_progress ev;
                uint64_t done, total;
                if (parsed(acs_agent_progress_parse(m.payload, m.len, &ev, &done, &total), "progress"))
                        out("{\"event\":\"progress\",\"what\":%d,\"done\":%llu,\"total\":%llu}", (int)ev,
                            (unsigned long long)done, (unsigned long long)total);
                break;
        }
        case ACS_WIRE_P_CHANGE: {
                uint64_t seq;
                if (parsed(acs_agent_change_parse(m.payload, m.len, &seq), "change"))
                        out("{\"event\":\"change\",\"seq\":%llu}", (unsigned long long)seq);
                break;
        }
        default:
                break;
        }
        acs_wire_msg_clear(&m);
}

static int read_password(int fd)
{
        password = sodium_malloc(ACS_AGENT_PASSWORD_MAX + 2);
        if (!password)
                return -ENOMEM;
        size_t n = 0;
        for (;;) {
                ssize_t r = read(fd, password + n, ACS_AGENT_PASSWORD_MAX + 1 - n);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0)
                        break;
                n += (size_t)r;
                if (n > ACS_AGENT_PASSWORD_MAX)
                        return -E2BIG;
        }
        while (n && (password[n - 1] == '\n' || password[n - 1] == '\r'))
                n--;
        password[n] = 0;
        password_len = n;
        return n ? 0 : -ENODATA;
}

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
                {"dir", required_argument, NULL, 'd'},
                {"password-fd", required_argument, NULL, 'p'},
                {"agent-uid", required_argument, NULL, 'u'},
                {"agent-gid", required_argument, NULL, 'g'},
                {"daemon-user", required_argument, NULL, 'U'},
                {"hold-cred", no_argument, NULL, 'H'},
                {0},
        };
        const char *dir = NULL, *daemon_user = NULL;
        int pwfd = -1;
        long uid = -1, gid = -1;
        int c;
        while ((c = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
                switch (c) {
                case 'd': dir = optarg; break;
                case 'p': pwfd = atoi(optarg); break;
                case 'u': uid = atol(optarg); break;
                case 'g': gid = atol(optarg); break;
                case 'U': daemon_user = optarg; break;
                case 'H': hold_cred = true; break;
                default: return 64;
                }
        }
        if (!dir || pwfd < 0 || optind >= argc) {
                fprintf(stderr, "usage: acs-bus-driver --dir DIR --password-fd N [--agent-uid UID] -- PROGRAM ARGS...\n");
                return 64;
        }
        if (acs_wire_init() < 0 || read_password(pwfd) < 0) {
                fprintf(stderr, "acs-bus-driver: cannot read the password\n");
                return 66;
        }
        close(pwfd);
        signal(SIGPIPE, SIG_IGN);
        setvbuf(stdin, NULL, _IONBF, 0); /* one line per poll wake-up: nothing left in a buffer */
        uid_t agent_uids[1] = {(uid_t)uid};
        acs_bus_daemon_opts o = {.dir = dir, .max_agents = 16, .owner_uid = geteuid(),
                                 .agent_uids = agent_uids, .n_agent_uids = uid >= 0 ? 1 : 0,
                                 .daemon_user = daemon_user};
        char *address = NULL;
        pid_t dpid = 0;
        int r = acs_bus_daemon_start(&o, &address, &dpid);
        if (r < 0) {
                fprintf(stderr, "acs-bus-driver: cannot start dbus-daemon: %s\n", strerror(-r));
                return 69;
        }
        r = acs_bus_connect(address, &bus);
        if (r == 0)
                r = acs_bus_request_name(bus, ACS_BUS_NAME);
        if (r == 0)
                r = acs_bus_watch_departures(bus);
        if (r < 0) {
                fprintf(stderr, "acs-bus-driver: bus: %s\n", strerror(-r));
                acs_bus_daemon_stop(dpid);
                return 69;
        }
        acs_bus_set_handlers(bus, on_message, NULL, NULL);
        acs_wire_keys *k = NULL, *ck = NULL;
        acs_wire_pub pub, cpub;
        if (acs_wire_keys_new(&k) < 0 || acs_wire_keys_new(&ck) < 0)
                return 70;
        acs_wire_keys_public(k, &pub);
        acs_wire_keys_public(ck, &cpub);
        if (acs_wire_new(ACS_WIRE_ID_ACSD, &k, &wire) < 0 || acs_wire_add_peer(wire, CHILD_ID, &cpub) < 0)
                return 70;
        out("{\"event\":\"bus\",\"address\":\"%s\",\"daemon_pid\":%d}", address, (int)dpid);

        char line[256];
        if (!fgets(line, sizeof(line), stdin) || strncmp(line, "start", 5) != 0) {
                acs_bus_daemon_stop(dpid);
                return 0;
        }
        int kp[2];
        if (pipe2(kp, O_CLOEXEC) < 0)
                return 71;
        child = fork();
        if (child < 0)
                return 71;
        if (child == 0) {
                if (dup2(kp[0], 3) < 0)
                        _exit(127);
                if (gid >= 0 && (setgroups(0, NULL) < 0 || setgid((gid_t)gid) < 0))
                        _exit(127);
                if (uid >= 0 && setuid((uid_t)uid) < 0)
                        _exit(127);
                /* PROGRAM --bus ADDRESS --key-fd 3 ARGS... (options first: acs-fs stops at its mountpoint) */
                int n = argc - optind;
                char **args = calloc((size_t)n + 5, sizeof(char *));
                args[0] = argv[optind];
                args[1] = "--bus";
                args[2] = address;
                args[3] = "--key-fd";
                args[4] = "3";
                for (int i = 1; i < n; i++)
                        args[4 + i] = argv[optind + i];
                execv(args[0], args);
                _exit(127);
        }
        close(kp[0]);
        r = acs_wire_handover_write(kp[1], CHILD_ID, ck, &pub);
        close(kp[1]);
        ck = acs_wire_keys_free(ck); /* acsd forgets the child's secret keys */
        if (r < 0)
                out("{\"event\":\"handover_failed\"}");

        int status = -1;
        bool stdin_open = true;
        for (;;) {
                struct pollfd p[2] = {
                        {.fd = acs_bus_fd(bus), .events = acs_bus_poll_events(bus)},
                        {.fd = stdin_open ? 0 : -1, .events = POLLIN},
                };
                if (!acs_bus_has_pending(bus))
                        poll(p, 2, 100);
                if (acs_bus_dispatch(bus) < 0) {
                        out("{\"event\":\"bus_lost\"}");
                        break;
                }
                if (p[1].revents) {
                        if (!fgets(line, sizeof(line), stdin)) {
                                stdin_open = false;
                        } else if (!strncmp(line, "cred", 4)) {
                                send_cred();
                        } else if (!strncmp(line, "stop", 4)) {
                                send_to_agent(ACS_WIRE_P_STOP, NULL, 0);
                        } else if (!strncmp(line, "sync", 4)) {
                                char *mb = line + 4;
                                mb += strspn(mb, " ");
                                mb[strcspn(mb, "\n")] = 0;
                                send_to_agent(ACS_WIRE_P_SYNC_NOW, mb, strlen(mb));
                        }
                }
                pid_t w = waitpid(child, &status, WNOHANG);
                if (w == child) {
                        acs_bus_dispatch(bus); /* its last words */
                        out("{\"event\":\"exit\",\"status\":%d}",
                            WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
                        break;
                }
        }
        bus = acs_bus_free(bus);
        wire = acs_wire_free(wire);
        acs_bus_daemon_stop(dpid);
        acs_bus_shutdown();
        free(address);
        acs_secret_free(password);
        return 0;
}
