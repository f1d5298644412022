/* SPDX-License-Identifier: MIT */
/* acs-dbus-scale: how far acsd's private D-Bus goes — N agent connections, signed requests with encrypted replies, limits. */

/*
 * One process plays acsd (owns ACS_BUS_NAME on a dbus-daemon started with the very
 * configuration acsd ships, acs_bus_daemon_config), K forked worker processes play N
 * agents (one bus connection and one acs_wire endpoint each). Phases:
 *   connect  every agent connects, sends a signed AGENT_HELLO; acsd checks each sender's
 *            credentials with the daemon (as acsd does) before it counts the agent
 *   rtt      every agent, R times: a signed CRED_REQUEST, acsd opens it and answers a boxed
 *            CRED, the agent opens that; all agents at once (a storm) and one at a time
 * Output: one JSON object on stdout (bench/dbus_bench.py turns runs into a table).
 * Failure modes are reported, not hidden: connections refused, messages lost, the error
 * libdbus returned.
 */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "acs/bus.h"
#include "acs/wire.h"

static double now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static long rss_kb(pid_t pid, const char *field)
{
        char path[64], line[256];
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return -1;
        long v = -1;
        size_t fl = strlen(field);
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, field, fl) == 0 && line[fl] == ':')
                        v = strtol(line + fl + 1, NULL, 10);
        fclose(f);
        return v;
}

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
        if (n == 0)
                return -1;
        size_t i = (size_t)(p * (double)(n - 1) + 0.5);
        return v[i];
}

/* ---- the agents (in a worker process) ---- */

typedef struct agent {
        uint32_t id;
        acs_bus *bus;
        acs_wire *wire;
        double *sent;   /* send times of the outstanding requests, in order */
        unsigned nsent, nrecv;
        int error; /* first error seen on this agent */
} agent;

typedef struct worker_ctx {
        agent *a;
        size_t n;
        agent *current; /* the agent whose connection is dispatching */
        double *lat;
        size_t nlat;
        uint64_t bad_replies;
} worker_ctx;

static void agent_on_message(void *ud, const char *sender, const uint8_t *msg, size_t len)
{
        worker_ctx *wc = ud;
        agent *ag = wc->current;
        acs_wire_msg m = {0};
        const char *why = NULL;
        int r = acs_wire_open(ag->wire, msg, len, ACS_WIRE_MASK(ACS_WIRE_P_CRED), &m, &why);
        if (r < 0 || m.len != 16) {
                wc->bad_replies++;
        } else if (ag->nrecv < ag->nsent) {
                wc->lat[wc->nlat++] = now_ms() - ag->sent[ag->nrecv++];
        }
        acs_wire_msg_clear(&m);
}

static int agent_send(agent *ag, enum acs_wire_purpose p, const char *payload)
{
        uint8_t *msg = NULL;
        size_t len = 0;
        int r = acs_wire_seal(ag->wire, ACS_WIRE_ID_ACSD, p, payload, strlen(payload), &msg, &len);
        if (r < 0)
                return r;
        r = acs_bus_send(ag->bus, ACS_BUS_NAME, msg, len);
        free(msg);
        if (r == 0)
                r = acs_bus_flush(ag->bus, 10000);
        return r;
}

/* Waits until every agent in [0,n) that sent got its reply or timeout_ms passed. */
static void wait_replies(worker_ctx *wc, agent **set, size_t n, int timeout_ms)
{
        struct pollfd *p = calloc(n, sizeof(*p));
        double deadline = now_ms() + timeout_ms;
        for (;;) {
                size_t k = 0, waiting = 0;
                for (size_t i = 0; i < n; i++) {
                        agent *ag = set[i];
                        if (ag->nrecv >= ag->nsent || ag->error)
                                continue;
                        waiting++;
                        if (acs_bus_has_pending(ag->bus)) {
                                wc->current = ag;
                                if (acs_bus_dispatch(ag->bus) < 0)
                                        ag->error = -ECONNRESET;
                                continue;
                        }
                        p[k].fd = acs_bus_fd(ag->bus);
                        p[k].events = acs_bus_poll_events(ag->bus);
                        p[k].revents = 0;
                        k++;
                }
                if (!waiting)
                        break;
                double left = deadline - now_ms();
                if (left <= 0)
                        break;
                if (k == 0)
                        continue;
                int r = poll(p, k, (int)left + 1);
                if (r < 0 && errno != EINTR)
                        break;
                size_t j = 0;
                for (size_t i = 0; i < n && j < k; i++) {
                        agent *ag = set[i];
                        if (ag->nrecv >= ag->nsent || ag->error)
                                continue;
                        if (acs_bus_has_pending(ag->bus))
                                continue;
                        if (p[j].revents) {
                                wc->current = ag;
                                if (acs_bus_dispatch(ag->bus) < 0)
                                        ag->error = -ECONNRESET;
                        }
                        j++;
                }
        }
        free(p);
}

static int write_all(int fd, const void *buf, size_t len)
{
        const char *b = buf;
        while (len) {
                ssize_t w = write(fd, b, len);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                b += w;
                len -= (size_t)w;
        }
        return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
        char *b = buf;
        while (len) {
                ssize_t r = read(fd, b, len);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (r == 0)
                        return -EPIPE;
                b += r;
                len -= (size_t)r;
        }
        return 0;
}

/* Per-worker report to the parent: fixed header, then latencies. */
typedef struct report {
        uint32_t connected, connect_failed, send_failed, lost, bad_replies, disconnected;
        int first_error;
        double connect_ms;
        uint32_t n_storm, n_serial;
} report;

static int worker_main(const char *address, agent *ags, size_t n, unsigned rounds, unsigned burst,
                       unsigned serial, int to_parent, int from_parent)
{
        worker_ctx wc = {.a = ags, .n = n};
        report rep = {0};
        size_t cap = (size_t)n * rounds * burst + serial + 16;
        for (size_t i = 0; i < n; i++)
                if (!(ags[i].sent = calloc(burst, sizeof(double))))
                        return 1;
        wc.lat = calloc(cap, sizeof(double));
        agent **set = calloc(n, sizeof(*set));
        if (!wc.lat || !set)
                return 1;

        /* phase 1: connect + hello */
        double t0 = now_ms();
        for (size_t i = 0; i < n; i++) {
                agent *ag = &ags[i];
                int r = acs_bus_connect(address, &ag->bus);
                if (r < 0) {
                        ag->error = r;
                        rep.connect_failed++;
                        if (!rep.first_error)
                                rep.first_error = r;
                        continue;
                }
                acs_bus_set_handlers(ag->bus, agent_on_message, NULL, &wc);
                char hello[64];
                snprintf(hello, sizeof(hello), "kind=bench pid=%d", (int)getpid());
                r = agent_send(ag, ACS_WIRE_P_AGENT_HELLO, hello);
                if (r < 0) {
                        ag->error = r;
                        rep.send_failed++;
                        if (!rep.first_error)
                                rep.first_error = r;
                        continue;
                }
                rep.connected++;
        }
        rep.connect_ms = now_ms() - t0;
        char c = 'c';
        if (write_all(to_parent, &c, 1) < 0 || read_all(from_parent, &c, 1) < 0)
                return 1;

        /* phase 2: storm — every agent sends, then all wait */
        for (unsigned round = 0; round < rounds; round++) {
                size_t k = 0;
                for (size_t i = 0; i < n; i++) {
                        agent *ag = &ags[i];
                        if (ag->error)
                                continue;
                        ag->nsent = ag->nrecv = 0;
                        for (unsigned b = 0; b < burst && !ag->error; b++) {
                                ag->sent[ag->nsent++] = now_ms();
                                int r = agent_send(ag, ACS_WIRE_P_CRED_REQUEST, "imap");
                                if (r < 0) {
                                        ag->nsent--;
                                        ag->error = r;
                                        rep.send_failed++;
                                        if (!rep.first_error)
                                                rep.first_error = r;
                                }
                        }
                        if (ag->nsent)
                                set[k++] = ag;
                }
                wait_replies(&wc, set, k, 30000);
                for (size_t i = 0; i < k; i++)
                        rep.lost += set[i]->nsent - set[i]->nrecv;
        }
        rep.n_storm = (uint32_t)wc.nlat;
        if (write_all(to_parent, &c, 1) < 0 || read_all(from_parent, &c, 1) < 0)
                return 1;

        /* phase 3: one at a time (only worker 0 is asked to, serial > 0) */
        for (unsigned i = 0; i < serial && n; i++) {
                agent *ag = &ags[i % n];
                if (ag->error)
                        continue;
                ag->nsent = ag->nrecv = 0;
                ag->sent[ag->nsent++] = now_ms();
                if (agent_send(ag, ACS_WIRE_P_CRED_REQUEST, "imap") < 0) {
                        rep.send_failed++;
                        continue;
                }
                set[0] = ag;
                wait_replies(&wc, set, 1, 10000);
                rep.lost += ag->nsent - ag->nrecv;
        }
        rep.n_serial = (uint32_t)(wc.nlat - rep.n_storm);
        for (size_t i = 0; i < n; i++)
                if (ags[i].error == -ECONNRESET)
                        rep.disconnected++;
        rep.bad_replies = (uint32_t)wc.bad_replies;
        if (write_all(to_parent, &rep, sizeof(rep)) < 0 ||
            write_all(to_parent, wc.lat, wc.nlat * sizeof(double)) < 0)
                return 1;
        /* stay connected until the parent measured and says bye */
        read_all(from_parent, &c, 1);
        for (size_t i = 0; i < n; i++) {
                acs_bus_free(ags[i].bus);
                acs_wire_free(ags[i].wire);
                free(ags[i].sent);
        }
        free(wc.lat);
        free(set);
        return 0;
}

/* ---- acsd's side (the parent) ---- */

typedef struct server {
        acs_bus *bus;
        acs_wire *wire;
        uint64_t hellos, requests, rejected, creds_checked, cred_errors, send_errors;
        char **sender_of; /* unique name bound to each agent id at HELLO */
        size_t n_ids;
} server;

static void server_on_message(void *ud, const char *sender, const uint8_t *msg, size_t len)
{
        server *s = ud;
        acs_wire_msg m = {0};
        int r = acs_wire_open(s->wire, msg, len,
                              ACS_WIRE_MASK(ACS_WIRE_P_AGENT_HELLO) | ACS_WIRE_MASK(ACS_WIRE_P_CRED_REQUEST),
                              &m, NULL);
        if (r < 0 || m.sender == 0 || m.sender > s->n_ids) {
                s->rejected++;
                acs_wire_msg_clear(&m);
                return;
        }
        if (m.purpose == ACS_WIRE_P_AGENT_HELLO) {
                /* as acsd: ask the daemon who this is, then bind the id to the unique name */
                pid_t pid;
                uid_t uid;
                if (acs_bus_peer_creds(s->bus, sender, &pid, &uid) < 0) {
                        s->cred_errors++;
                } else {
                        s->creds_checked++;
                        free(s->sender_of[m.sender - 1]);
                        s->sender_of[m.sender - 1] = strdup(sender);
                        s->hellos++;
                }
        } else {
                const char *bound = s->sender_of[m.sender - 1];
                if (!bound || strcmp(bound, sender) != 0) {
                        s->rejected++;
                } else {
                        uint8_t *out = NULL;
                        size_t olen = 0;
                        static const char pw[17] = "0123456789abcdef";
                        if (acs_wire_seal(s->wire, m.sender, ACS_WIRE_P_CRED, pw, 16, &out, &olen) < 0 ||
                            acs_bus_send(s->bus, sender, out, olen) < 0)
                                s->send_errors++;
                        else
                                s->requests++;
                        free(out);
                }
        }
        acs_wire_msg_clear(&m);
}

/* Serves the bus until every fd in ctl[] said something (one byte each) or timeout. */
static int serve_until(server *s, int *ctl, size_t nctl, int timeout_ms)
{
        size_t got = 0;
        bool *seen = calloc(nctl, 1);
        struct pollfd *p = calloc(nctl + 1, sizeof(*p));
        double deadline = now_ms() + timeout_ms;
        int ret = 0;
        while (got < nctl) {
                if (acs_bus_has_pending(s->bus)) {
                        if (acs_bus_dispatch(s->bus) < 0) {
                                ret = -ECONNRESET;
                                break;
                        }
                        continue;
                }
                p[0].fd = acs_bus_fd(s->bus);
                p[0].events = acs_bus_poll_events(s->bus);
                for (size_t i = 0; i < nctl; i++) {
                        p[i + 1].fd = seen[i] ? -1 : ctl[i];
                        p[i + 1].events = POLLIN;
                }
                double left = deadline - now_ms();
                if (left <= 0) {
                        ret = -ETIMEDOUT;
                        break;
                }
                int r = poll(p, nctl + 1, (int)left + 1);
                if (r < 0 && errno != EINTR) {
                        ret = -errno;
                        break;
                }
                if (r <= 0)
                        continue;
                if (p[0].revents && acs_bus_dispatch(s->bus) < 0) {
                        ret = -ECONNRESET;
                        break;
                }
                for (size_t i = 0; i < nctl; i++)
                        if (!seen[i] && p[i + 1].revents) {
                                char c;
                                if (read(ctl[i], &c, 1) != 1) {
                                        ret = -EPIPE;
                                        goto out;
                                }
                                seen[i] = true;
                                got++;
                        }
        }
out:
        free(seen);
        free(p);
        return ret;
}

static void usage(void)
{
        fprintf(stderr, "usage: acs-dbus-scale --agents N [--workers K] [--rounds R] [--burst B] [--serial S]\n"
                        "                      [--max-agents M] [--dir DIR] [--daemon PATH]\n"
                        "                      [--address ADDR --bus-pid PID]  (a bus already running)\n"
                        "Runs acsd's bus configuration (sized for M agents, default 10000 as acsd's\n"
                        "bus.max_connections) with N agents in K processes; prints one JSON object.\n");
}

int main(int argc, char **argv)
{
        unsigned n = 100, workers = 4, rounds = 5, burst = 1, serial = 2000, max_agents = 10000;
        const char *dir = "/tmp/acs-dbus-scale", *daemon_path = NULL, *use_address = NULL;
        pid_t use_pid = 0;
        static const struct option opts[] = {
                {"agents", required_argument, NULL, 'n'},  {"workers", required_argument, NULL, 'k'},
                {"rounds", required_argument, NULL, 'r'},  {"serial", required_argument, NULL, 's'},
                {"burst", required_argument, NULL, 'b'},
                {"max-agents", required_argument, NULL, 'm'}, {"dir", required_argument, NULL, 'd'},
                {"daemon", required_argument, NULL, 'D'},  {"help", no_argument, NULL, 'h'},
                {"address", required_argument, NULL, 'A'}, {"bus-pid", required_argument, NULL, 'P'},
                {0},
        };
        int c;
        while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
                switch (c) {
                case 'n': n = (unsigned)strtoul(optarg, NULL, 10); break;
                case 'k': workers = (unsigned)strtoul(optarg, NULL, 10); break;
                case 'r': rounds = (unsigned)strtoul(optarg, NULL, 10); break;
                case 'b': burst = (unsigned)strtoul(optarg, NULL, 10); break;
                case 's': serial = (unsigned)strtoul(optarg, NULL, 10); break;
                case 'm': max_agents = (unsigned)strtoul(optarg, NULL, 10); break;
                case 'd': dir = optarg; break;
                case 'D': daemon_path = optarg; break;
                case 'A': use_address = optarg; break;
                case 'P': use_pid = (pid_t)strtol(optarg, NULL, 10); break;
                default: usage(); return c == 'h' ? 0 : 64;
                }
        }
        if (n == 0 || workers == 0 || workers > n || max_agents == 0 || burst == 0 || burst > 100000) {
                usage();
                return 64;
        }
        if (acs_wire_init() < 0)
                return 70;
        /* file descriptors: each agent connection is one fd in a worker; acsd's side one */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
                rl.rlim_cur = rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
        }
        mkdir(dir, 0755);
        acs_bus_daemon_opts bo = {.dir = dir, .max_agents = max_agents, .owner_uid = getuid(),
                                  .daemon_path = daemon_path};
        char *address = NULL;
        pid_t dpid = 0;
        double t_daemon = now_ms();
        int r = 0;
        if (use_address) {
                /* a bus started elsewhere (dbus-broker, see bench/dbus_bench.py) */
                address = strdup(use_address);
                dpid = use_pid;
        } else {
                r = acs_bus_daemon_start(&bo, &address, &dpid);
        }
        if (r < 0) {
                fprintf(stderr, "acs-dbus-scale: cannot start the bus: %s\n", strerror(-r));
                return 69;
        }
        t_daemon = now_ms() - t_daemon;
        long daemon_rss0 = rss_kb(dpid, "VmRSS");

        /* keys: acsd's and one set per agent (the public halves stay with acsd) */
        acs_wire_keys *sk = NULL;
        acs_wire_pub spub;
        if (acs_wire_keys_new(&sk) < 0)
                return 70;
        acs_wire_keys_public(sk, &spub);
        server s = {.n_ids = n};
        s.sender_of = calloc(n, sizeof(char *));
        if (acs_wire_new(ACS_WIRE_ID_ACSD, &sk, &s.wire) < 0)
                return 70;
        agent *ags = calloc(n, sizeof(*ags));
        for (unsigned i = 0; i < n; i++) {
                acs_wire_keys *k = NULL;
                acs_wire_pub pub;
                if (acs_wire_keys_new(&k) < 0)
                        return 70;
                acs_wire_keys_public(k, &pub);
                ags[i].id = i + 1;
                if (acs_wire_add_peer(s.wire, i + 1, &pub) < 0 || acs_wire_new(i + 1, &k, &ags[i].wire) < 0 ||
                    acs_wire_add_peer(ags[i].wire, ACS_WIRE_ID_ACSD, &spub) < 0)
                        return 70;
        }
        r = acs_bus_connect(address, &s.bus);
        if (r == 0)
                r = acs_bus_request_name(s.bus, ACS_BUS_NAME);
        if (r < 0) {
                fprintf(stderr, "acs-dbus-scale: acsd's connection: %s\n", strerror(-r));
                acs_bus_daemon_stop(dpid);
                return 69;
        }
        acs_bus_set_handlers(s.bus, server_on_message, NULL, &s);

        int *up = calloc(workers, sizeof(int)), *down = calloc(workers, sizeof(int));
        pid_t *pids = calloc(workers, sizeof(pid_t));
        for (unsigned w = 0; w < workers; w++) {
                int a[2], b[2];
                if (pipe2(a, O_CLOEXEC) < 0 || pipe2(b, O_CLOEXEC) < 0)
                        return 71;
                size_t from = (size_t)n * w / workers, to = (size_t)n * (w + 1) / workers;
                pid_t pid = fork();
                if (pid < 0)
                        return 71;
                if (pid == 0) {
                        close(a[0]);
                        close(b[1]);
                        _exit(worker_main(address, ags + from, to - from, rounds, burst,
                                          w == 0 ? serial : 0, a[1], b[0]));
                }
                close(a[1]);
                close(b[0]);
                up[w] = a[0];
                down[w] = b[1];
                pids[w] = pid;
        }
        /* the workers' copies of the agent keys are theirs; acsd forgets them */
        for (unsigned i = 0; i < n; i++)
                ags[i].wire = acs_wire_free(ags[i].wire);

        double t1 = now_ms();
        int sr = serve_until(&s, up, workers, 600000);
        /* hellos still in flight after the workers said "connected" */
        double settle = now_ms() + 2000;
        while (s.hellos + s.rejected + s.cred_errors < n && now_ms() < settle)
                acs_bus_wait(s.bus, 50);
        double connect_ms = now_ms() - t1;
        long daemon_rss = rss_kb(dpid, "VmRSS"), self_rss = rss_kb(getpid(), "VmRSS");
        uint64_t hellos = s.hellos;

        double t2 = now_ms();
        for (unsigned w = 0; w < workers; w++)
                write_all(down[w], "g", 1);
        if (sr == 0)
                sr = serve_until(&s, up, workers, 600000);
        double storm_ms = now_ms() - t2;
        uint64_t storm_requests = s.requests;
        long daemon_hwm = rss_kb(dpid, "VmHWM");

        double t3 = now_ms();
        for (unsigned w = 0; w < workers; w++)
                write_all(down[w], "g", 1);
        /* serve while worker 0 runs its serial round trips; collect the reports */
        report tot = {0};
        double *lat_storm = calloc((size_t)n * rounds * burst + 16, sizeof(double)), *lat_serial = calloc(serial + 16, sizeof(double));
        size_t nst = 0, nse = 0;
        double serial_ms = 0;
        for (unsigned w = 0; w < workers; w++) {
                report rep;
                /* keep serving the bus while waiting for this worker's report */
                for (;;) {
                        struct pollfd p[2] = {{.fd = acs_bus_fd(s.bus), .events = acs_bus_poll_events(s.bus)},
                                              {.fd = up[w], .events = POLLIN}};
                        if (acs_bus_has_pending(s.bus)) {
                                acs_bus_dispatch(s.bus);
                                continue;
                        }
                        if (poll(p, 2, 1000) < 0 && errno != EINTR)
                                break;
                        if (p[0].revents)
                                acs_bus_dispatch(s.bus);
                        if (p[1].revents)
                                break;
                }
                if (w == 0)
                        serial_ms = now_ms() - t3;
                if (read_all(up[w], &rep, sizeof(rep)) < 0) {
                        fprintf(stderr, "acs-dbus-scale: worker %u died\n", w);
                        sr = -EPIPE;
                        continue;
                }
                double *tmp = malloc(((size_t)rep.n_storm + rep.n_serial + 1) * sizeof(double));
                read_all(up[w], tmp, ((size_t)rep.n_storm + rep.n_serial) * sizeof(double));
                memcpy(lat_storm + nst, tmp, rep.n_storm * sizeof(double));
                nst += rep.n_storm;
                memcpy(lat_serial + nse, tmp + rep.n_storm, rep.n_serial * sizeof(double));
                nse += rep.n_serial;
                free(tmp);
                tot.connected += rep.connected;
                tot.connect_failed += rep.connect_failed;
                tot.send_failed += rep.send_failed;
                tot.lost += rep.lost;
                tot.bad_replies += rep.bad_replies;
                tot.disconnected += rep.disconnected;
                if (!tot.first_error)
                        tot.first_error = rep.first_error;
                if (rep.connect_ms > tot.connect_ms)
                        tot.connect_ms = rep.connect_ms;
        }
        for (unsigned w = 0; w < workers; w++) {
                write_all(down[w], "b", 1);
                close(down[w]);
                close(up[w]);
        }
        int failed_workers = 0;
        for (unsigned w = 0; w < workers; w++) {
                int st = 0;
                waitpid(pids[w], &st, 0);
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                        failed_workers++;
        }
        qsort(lat_storm, nst, sizeof(double), cmp_double);
        qsort(lat_serial, nse, sizeof(double), cmp_double);

        printf("{\"agents\":%u,\"workers\":%u,\"rounds\":%u,\"burst\":%u,\"max_agents\":%u,"
               "\"daemon_start_ms\":%.1f,\"connected\":%u,\"connect_failed\":%u,\"first_error\":\"%s\","
               "\"hellos_accepted\":%" PRIu64 ",\"connect_ms\":%.1f,"
               "\"daemon_rss_kb_idle\":%ld,\"daemon_rss_kb_connected\":%ld,\"daemon_hwm_kb\":%ld,"
               "\"acsd_side_rss_kb\":%ld,"
               "\"storm_requests\":%" PRIu64 ",\"storm_ms\":%.1f,\"storm_rtt_per_s\":%.0f,"
               "\"storm_p50_ms\":%.3f,\"storm_p99_ms\":%.3f,\"storm_max_ms\":%.3f,"
               "\"serial_n\":%zu,\"serial_ms\":%.1f,\"serial_rtt_per_s\":%.0f,\"serial_p50_ms\":%.3f,"
               "\"serial_p99_ms\":%.3f,"
               "\"send_failed\":%u,\"lost\":%u,\"bad_replies\":%u,\"disconnected\":%u,"
               "\"rejected_at_acsd\":%" PRIu64 ",\"cred_errors\":%" PRIu64 ",\"acsd_send_errors\":%" PRIu64 ","
               "\"failed_workers\":%d,\"serve_error\":\"%s\"}\n",
               n, workers, rounds, burst, max_agents, t_daemon, tot.connected, tot.connect_failed,
               tot.first_error ? strerror(-tot.first_error) : "", hellos, connect_ms, daemon_rss0,
               daemon_rss, daemon_hwm, self_rss, storm_requests, storm_ms,
               storm_ms > 0 ? (double)storm_requests * 1000.0 / storm_ms : 0.0, pct(lat_storm, nst, 0.5),
               pct(lat_storm, nst, 0.99), nst ? lat_storm[nst - 1] : -1.0, nse, serial_ms,
               serial_ms > 0 ? (double)nse * 1000.0 / serial_ms : 0.0, pct(lat_serial, nse, 0.5),
               pct(lat_serial, nse, 0.99), tot.send_failed, tot.lost, tot.bad_replies, tot.disconnected,
               s.rejected, s.cred_errors, s.send_errors, failed_workers, sr ? strerror(-sr) : "");
        acs_bus_free(s.bus);
        acs_wire_free(s.wire);
        if (!use_address)
                acs_bus_daemon_stop(dpid);
        for (unsigned i = 0; i < n; i++)
                free(s.sender_of[i]);
        free(s.sender_of);
        free(ags);
        free(lat_storm);
        free(lat_serial);
        free(address);
        free(up);
        free(down);
        free(pids);
        return failed_workers || sr ? 1 : 0;
}
