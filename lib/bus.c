/* SPDX-License-Identifier: MIT */
/* acsd's private D-Bus: its dbus-daemon (config, start, stop) and a poll-driven libdbus connection for sealed messages. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dbus/dbus.h>

#include "acs/bus.h"
#include "acs/util.h"

#define CALL_TIMEOUT_MS 5000
#define SOCKET_NAME "bus.sock"
#define CONFIG_NAME "bus.conf"

static int64_t mono_ms(void)
{
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* ---- the daemon ---- */

static int check_opts(const acs_bus_daemon_opts *o)
{
        if (!o || !o->dir || o->dir[0] != '/' || o->max_agents == 0 || o->max_agents > 1000000)
                return -EINVAL;
        if (strlen(o->dir) + 1 + strlen(SOCKET_NAME) >= 100)
                return -EINVAL;
        /* the path goes into XML and a D-Bus address: keep it to plain characters */
        for (const char *p = o->dir; *p; p++)
                if (!(isalnum((unsigned char)*p) || strchr("/._-+", *p)))
                        return -EINVAL;
        if (o->n_agent_uids && !o->agent_uids)
                return -EINVAL;
        if (o->daemon_user) {
                if (!*o->daemon_user || strlen(o->daemon_user) > 32)
                        return -EINVAL;
                for (const char *p = o->daemon_user; *p; p++)
                        if (!(isalnum((unsigned char)*p) || strchr("._-", *p)))
                                return -EINVAL;
        }
        return 0;
}

/* Appends printf output to a growing buffer; sets *err on the first failure. */
ACS_PRINTF(4, 5)
static void put(char **buf, size_t *len, int *err, const char *fmt, ...)
{
        if (*err)
                return;
        va_list ap;
        va_start(ap, fmt);
        char *s = NULL;
        int n = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (n < 0) {
                *err = -ENOMEM;
                return;
        }
        char *nb = realloc(*buf, *len + (size_t)n + 1);
        if (!nb) {
                free(s);
                *err = -ENOMEM;
                return;
        }
        memcpy(nb + *len, s, (size_t)n + 1);
        *len += (size_t)n;
        *buf = nb;
        free(s);
}

int acs_bus_daemon_config(const acs_bus_daemon_opts *o, char **ret)
{
        int r = check_opts(o);
        if (r < 0)
                return r;
        uint64_t n = o->max_agents;
        uint64_t per_uid = o->max_per_uid ? o->max_per_uid : n + 8;
        uint64_t total = n + 16; /* agents + acsd + a few monitors */
        uint64_t incomplete = 64 + n / 4;
        if (incomplete > 4096)
                incomplete = 4096;
        /* acsd's connection receives from every agent: let its queue hold a burst of them */
        uint64_t outgoing = 16ull * 1024 * 1024 + n * 16 * 1024;
        if (outgoing > 1024ull * 1024 * 1024)
                outgoing = 1024ull * 1024 * 1024;
        char *b = NULL;
        size_t len = 0;
        int err = 0;
        put(&b, &len, &err,
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
            " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
            "<!-- acsd's private bus: written by acsd at each start (lib/bus.c); edits are lost. -->\n"
            "<busconfig>\n"
            "  <type>acs</type>\n"
            "  <listen>unix:path=%s/" SOCKET_NAME "</listen>\n"
            "  <auth>EXTERNAL</auth>\n"
            "%s%s%s"
            "  <policy context=\"default\">\n"
            "    <!-- who may connect -->\n"
            "    <deny user=\"*\"/>\n"
            "    <allow user=\"root\"/>\n"
            "    <allow user=\"%u\"/>\n",
            o->dir, o->daemon_user ? "  <user>" : "", o->daemon_user ? o->daemon_user : "",
            o->daemon_user ? "</user>\n" : "", (unsigned)o->owner_uid);
        if (o->n_agent_uids == 0)
                put(&b, &len, &err, "    <allow user=\"*\"/>\n");
        for (size_t i = 0; i < o->n_agent_uids; i++)
                put(&b, &len, &err, "    <allow user=\"%u\"/>\n", (unsigned)o->agent_uids[i]);
        put(&b, &len, &err,
            "    <!-- nothing by default: no names, no calls, no signals, no unrequested replies, no fds -->\n"
            "    <deny own=\"*\"/>\n"
            "    <deny send_type=\"method_call\"/>\n"
            "    <deny send_type=\"signal\"/>\n"
            "    <deny send_type=\"method_return\"/>\n"
            "    <deny send_type=\"error\"/>\n"
            "    <deny send_destination=\"*\" min_fds=\"1\"/>\n"
            "    <!-- requested replies, and the bus driver's own methods (Hello, GetNameOwner, ...) -->\n"
            "    <allow send_type=\"method_return\" send_requested_reply=\"true\" max_fds=\"0\"/>\n"
            "    <allow send_type=\"error\" send_requested_reply=\"true\" max_fds=\"0\"/>\n"
            "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\"/>\n"
            "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Peer\"/>\n"
            "    <deny send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\"\n"
            "          send_member=\"UpdateActivationEnvironment\"/>\n"
            "    <deny send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\"\n"
            "          send_member=\"StartServiceByName\"/>\n"
            "    <!-- agents: sealed messages to acsd's name, nothing else -->\n"
            "    <allow send_destination=\"" ACS_BUS_NAME "\" send_type=\"method_call\"\n"
            "           send_path=\"" ACS_BUS_PATH "\" send_interface=\"" ACS_BUS_INTERFACE "\"\n"
            "           send_member=\"" ACS_BUS_MEMBER "\" max_fds=\"0\"/>\n"
            "    <!-- receiving what was allowed to be sent; never eavesdropping -->\n"
            "    <allow receive_type=\"method_call\" max_fds=\"0\"/>\n"
            "    <allow receive_type=\"method_return\" max_fds=\"0\"/>\n"
            "    <allow receive_type=\"error\" max_fds=\"0\"/>\n"
            "    <allow receive_type=\"signal\" max_fds=\"0\"/>\n"
            "    <deny eavesdrop=\"true\" receive_type=\"method_call\"/>\n"
            "    <deny eavesdrop=\"true\" receive_type=\"method_return\"/>\n"
            "    <deny eavesdrop=\"true\" receive_type=\"error\"/>\n"
            "  </policy>\n"
            "  <policy user=\"%u\">\n"
            "    <!-- acsd: owns the name, sends sealed messages to any agent -->\n"
            "    <allow own=\"" ACS_BUS_NAME "\"/>\n"
            "    <allow send_type=\"method_call\" send_path=\"" ACS_BUS_PATH "\"\n"
            "           send_interface=\"" ACS_BUS_INTERFACE "\" send_member=\"" ACS_BUS_MEMBER "\" max_fds=\"0\"/>\n"
            "  </policy>\n"
            "  <policy user=\"root\">\n"
            "    <!-- root may watch the bus as a monitor (the daemon checks the caller is root too) -->\n"
            "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Monitoring\"/>\n"
            "  </policy>\n",
            (unsigned)o->owner_uid);
        put(&b, &len, &err,
            "  <!-- limits, sized for %" PRIu64 " agents -->\n"
            "  <limit name=\"max_completed_connections\">%" PRIu64 "</limit>\n"
            "  <limit name=\"max_incomplete_connections\">%" PRIu64 "</limit>\n"
            "  <limit name=\"max_connections_per_user\">%" PRIu64 "</limit>\n"
            "  <limit name=\"auth_timeout\">5000</limit>\n"
            "  <limit name=\"pending_fd_timeout\">1000</limit>\n"
            "  <limit name=\"max_incoming_bytes\">%u</limit>\n"
            "  <limit name=\"max_outgoing_bytes\">%" PRIu64 "</limit>\n"
            "  <limit name=\"max_message_size\">%u</limit>\n"
            "  <limit name=\"max_incoming_unix_fds\">1</limit> <!-- 0 would refuse every message -->\n"
            "  <limit name=\"max_outgoing_unix_fds\">0</limit>\n"
            "  <limit name=\"max_message_unix_fds\">0</limit>\n"
            "  <limit name=\"max_names_per_connection\">4</limit>\n"
            "  <limit name=\"max_match_rules_per_connection\">16</limit>\n"
            "  <limit name=\"max_replies_per_connection\">64</limit>\n"
            "  <limit name=\"reply_timeout\">10000</limit>\n"
            "  <limit name=\"max_pending_service_starts\">1</limit>\n"
            "  <limit name=\"service_start_timeout\">1000</limit>\n"
            "</busconfig>\n",
            n, total, incomplete, per_uid, 4u * 1024 * 1024, outgoing, (unsigned)ACS_BUS_MESSAGE_MAX * 2);
        if (err) {
                free(b);
                return err;
        }
        *ret = b;
        return 0;
}

static int write_file(const char *path, const char *text)
{
        _cleanup_free_ char *tmp = NULL;
        if (asprintf(&tmp, "%s.tmp", path) < 0)
                return -ENOMEM;
        _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        size_t len = strlen(text), off = 0;
        while (off < len) {
                ssize_t w = write(fd, text + off, len - off);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0) {
                        int e = -errno;
                        unlink(tmp);
                        return e;
                }
                off += (size_t)w;
        }
        if (rename(tmp, path) < 0) {
                int e = -errno;
                unlink(tmp);
                return e;
        }
        return 0;
}

/* Waits until process pid runs as user (real and effective uid). 0, -ENOENT (no such user), -ETIMEDOUT. */
static int wait_for_uid(pid_t pid, const char *user, int64_t deadline)
{
        struct passwd pwbuf, *pw = NULL;
        char buf[1024];
        if (getpwnam_r(user, &pwbuf, buf, sizeof(buf), &pw) != 0 || !pw)
                return -ENOENT;
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        for (;;) {
                FILE *f = fopen(path, "re");
                if (!f)
                        return -ESRCH;
                char line[256];
                unsigned long ruid = ULONG_MAX, euid = ULONG_MAX;
                while (fgets(line, sizeof(line), f))
                        if (!strncmp(line, "Uid:", 4))
                                sscanf(line + 4, "%lu %lu", &ruid, &euid);
                fclose(f);
                if (ruid == pw->pw_uid && euid == pw->pw_uid)
                        return 0;
                if (mono_ms() > deadline)
                        return -ETIMEDOUT;
                struct timespec ts = {0, 1000 * 1000};
                nanosleep(&ts, NULL);
        }
}

int acs_bus_daemon_start(const acs_bus_daemon_opts *o, char **ret_address, pid_t *ret_pid)
{
        _cleanup_free_ char *conf = NULL, *conf_path = NULL, *sock = NULL, *arg_conf = NULL;
        int r = acs_bus_daemon_config(o, &conf);
        if (r < 0)
                return r;
        if (asprintf(&conf_path, "%s/" CONFIG_NAME, o->dir) < 0 || asprintf(&sock, "%s/" SOCKET_NAME, o->dir) < 0 ||
            asprintf(&arg_conf, "--config-file=%s/" CONFIG_NAME, o->dir) < 0)
                return -ENOMEM;
        r = write_file(conf_path, conf);
        if (r < 0)
                return r;
        struct stat st;
        if (lstat(sock, &st) == 0 && S_ISSOCK(st.st_mode))
                (void)unlink(sock); /* a stale socket of an earlier run */

        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        const char *prog = o->daemon_path ? o->daemon_path : "dbus-daemon";
        pid_t pid = fork();
        if (pid < 0) {
                int e = -errno;
                close(p[0]);
                close(p[1]);
                return e;
        }
        if (pid == 0) {
                /* child: the pipe becomes fd 3 (inherited), nothing else beyond stdio */
                /* fds 3 and 4 are the same pipe: the daemon closes the address fd before
                 * printing the pid, so they must be two descriptors (address first) */
                if (p[1] < 5) {
                        int moved = fcntl(p[1], F_DUPFD_CLOEXEC, 5);
                        if (moved < 0)
                                _exit(127);
                        p[1] = moved;
                }
                if (dup2(p[1], 3) < 0 || dup2(p[1], 4) < 0)
                        _exit(127);
                int devnull = open("/dev/null", O_RDWR);
                if (devnull >= 0) {
                        dup2(devnull, 0);
                        dup2(devnull, 1);
                }
                closefrom(5);
                /* one descriptor per connection: give the daemon all the process may have */
                struct rlimit rl;
                if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                        rl.rlim_cur = rl.rlim_max;
                        (void)setrlimit(RLIMIT_NOFILE, &rl);
                }
                sigset_t none;
                sigemptyset(&none);
                sigprocmask(SIG_SETMASK, &none, NULL);
                execlp(prog, prog, arg_conf, "--fork", "--nopidfile", "--nosyslog", "--print-address=3",
                       "--print-pid=4", (char *)NULL);
                _exit(errno == ENOENT ? 126 : 127);
        }
        close(p[1]);
        /* two lines: the address, then the pid */
        char buf[1024];
        size_t len = 0;
        int lines = 0;
        int64_t deadline = mono_ms() + 10000;
        r = 0;
        while (lines < 2) {
                int64_t left = deadline - mono_ms();
                if (left <= 0) {
                        r = -ETIMEDOUT;
                        break;
                }
                struct pollfd pfd = {.fd = p[0], .events = POLLIN};
                int n = poll(&pfd, 1, (int)left);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        break;
                }
                if (n == 0)
                        continue;
                ssize_t got = read(p[0], buf + len, sizeof(buf) - 1 - len);
                if (got < 0 && errno == EINTR)
                        continue;
                if (got <= 0) {
                        r = got < 0 ? -errno : -EIO;
                        break;
                }
                len += (size_t)got;
                buf[len] = 0;
                lines = 0;
                for (size_t i = 0; i < len; i++)
                        lines += buf[i] == '\n';
                if (len == sizeof(buf) - 1 && lines < 2) {
                        r = -EIO;
                        break;
                }
        }
        close(p[0]);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        if (r == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                r = -EIO;
        if (r < 0) {
                if (WIFEXITED(status) && WEXITSTATUS(status) == 126)
                        return -ENOENT;
                return r;
        }
        char *nl = strchr(buf, '\n');
        *nl = 0;
        char *pidline = nl + 1;
        char *nl2 = strchr(pidline, '\n');
        *nl2 = 0;
        char *end;
        errno = 0;
        long dpid = strtol(pidline, &end, 10);
        if (errno || end == pidline || *end || dpid <= 1 || dpid > INT_MAX || strncmp(buf, "unix:", 5) != 0)
                return -EIO;
        if (o->daemon_user) {
                /* it switches user after printing: wait until it did (or give up on it) */
                r = wait_for_uid((pid_t)dpid, o->daemon_user, deadline);
                if (r < 0) {
                        (void)acs_bus_daemon_stop((pid_t)dpid);
                        return r;
                }
        }
        char *addr = strdup(buf);
        if (!addr)
                return -ENOMEM;
        *ret_address = addr;
        *ret_pid = (pid_t)dpid;
        return 0;
}

int acs_bus_daemon_stop(pid_t pid)
{
        if (pid <= 1)
                return -EINVAL;
        if (kill(pid, SIGTERM) < 0)
                return errno == ESRCH ? 0 : -errno;
        int64_t deadline = mono_ms() + 5000;
        bool killed = false;
        for (;;) {
                (void)waitpid(pid, NULL, WNOHANG); /* in case we are its reaper (subreaper, pid 1) */
                if (kill(pid, 0) < 0 && errno == ESRCH)
                        return 0;
                if (mono_ms() > deadline) {
                        if (killed)
                                return -ETIMEDOUT;
                        (void)kill(pid, SIGKILL);
                        killed = true;
                        deadline = mono_ms() + 2000;
                }
                struct timespec ts = {0, 2 * 1000 * 1000};
                nanosleep(&ts, NULL);
        }
}

/* ---- a connection ---- */

struct acs_bus {
        DBusConnection *c;
        char *unique;
        int fd;
        bool disconnected;
        acs_bus_message_fn on_message;
        acs_bus_gone_fn on_gone;
        void *userdata;
};

static int map_error(const DBusError *e)
{
        const char *n = e->name;
        if (!n)
                return -EIO;
        if (!strcmp(n, DBUS_ERROR_NO_MEMORY))
                return -ENOMEM;
        if (!strcmp(n, DBUS_ERROR_NO_SERVER))
                return -ECONNREFUSED;
        if (!strcmp(n, DBUS_ERROR_FILE_NOT_FOUND))
                return -ENOENT;
        if (!strcmp(n, DBUS_ERROR_BAD_ADDRESS))
                return -EINVAL;
        if (!strcmp(n, DBUS_ERROR_AUTH_FAILED) || !strcmp(n, DBUS_ERROR_ACCESS_DENIED) ||
            !strcmp(n, DBUS_ERROR_LIMITS_EXCEEDED))
                return -EACCES;
        if (!strcmp(n, DBUS_ERROR_NAME_HAS_NO_OWNER))
                return -ENOENT;
        if (!strcmp(n, DBUS_ERROR_DISCONNECTED) || !strcmp(n, DBUS_ERROR_NO_REPLY))
                return -ECONNRESET;
        if (!strcmp(n, DBUS_ERROR_TIMEOUT) || !strcmp(n, DBUS_ERROR_TIMED_OUT))
                return -ETIMEDOUT;
        return -EIO;
}

static DBusHandlerResult filter(DBusConnection *c, DBusMessage *m, void *data)
{
        acs_bus *b = data;
        int type = dbus_message_get_type(m);
        if (type == DBUS_MESSAGE_TYPE_SIGNAL) {
                if (dbus_message_is_signal(m, DBUS_INTERFACE_LOCAL, "Disconnected")) {
                        b->disconnected = true;
                        return DBUS_HANDLER_RESULT_HANDLED;
                }
                const char *sender = dbus_message_get_sender(m);
                if (sender && !strcmp(sender, DBUS_SERVICE_DBUS) &&
                    dbus_message_is_signal(m, DBUS_INTERFACE_DBUS, "NameOwnerChanged")) {
                        const char *name, *old_owner, *new_owner;
                        if (dbus_message_get_args(m, NULL, DBUS_TYPE_STRING, &name, DBUS_TYPE_STRING, &old_owner,
                                                  DBUS_TYPE_STRING, &new_owner, DBUS_TYPE_INVALID) &&
                            name[0] == ':' && new_owner[0] == 0 && b->on_gone)
                                b->on_gone(b->userdata, name);
                }
                return DBUS_HANDLER_RESULT_HANDLED;
        }
        if (type != DBUS_MESSAGE_TYPE_METHOD_CALL)
                return DBUS_HANDLER_RESULT_HANDLED;
        const char *sender = dbus_message_get_sender(m);
        if (!sender || sender[0] != ':' || !dbus_message_has_path(m, ACS_BUS_PATH) ||
            !dbus_message_is_method_call(m, ACS_BUS_INTERFACE, ACS_BUS_MEMBER) ||
            !dbus_message_has_signature(m, "ay"))
                return DBUS_HANDLER_RESULT_HANDLED; /* dropped, no error reply */
        const uint8_t *bytes = NULL;
        int n = 0;
        if (!dbus_message_get_args(m, NULL, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &bytes, &n, DBUS_TYPE_INVALID) ||
            n < 0 || (size_t)n > ACS_BUS_MESSAGE_MAX)
                return DBUS_HANDLER_RESULT_HANDLED;
        if (b->on_message)
                b->on_message(b->userdata, sender, bytes, (size_t)n);
        return DBUS_HANDLER_RESULT_HANDLED;
}

int acs_bus_connect(const char *address, acs_bus **ret)
{
        if (!address || !*address)
                return -EINVAL;
        acs_bus *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->fd = -1;
        DBusError e;
        dbus_error_init(&e);
        b->c = dbus_connection_open_private(address, &e);
        if (!b->c) {
                int r = map_error(&e);
                dbus_error_free(&e);
                free(b);
                return r;
        }
        dbus_connection_set_exit_on_disconnect(b->c, FALSE);
        dbus_connection_set_max_message_size(b->c, ACS_BUS_MESSAGE_MAX * 2);
        dbus_connection_set_max_received_size(b->c, 8L * 1024 * 1024);
        if (!dbus_bus_register(b->c, &e)) {
                int r = map_error(&e);
                /* a policy that refuses our uid shows as a dropped connection during Hello */
                if (r == -ECONNRESET || r == -EIO)
                        r = -EACCES;
                dbus_error_free(&e);
                acs_bus_free(b);
                return r;
        }
        const char *u = dbus_bus_get_unique_name(b->c);
        int fd = -1;
        if (!u || !(b->unique = strdup(u)) || !dbus_connection_get_unix_fd(b->c, &fd) ||
            !dbus_connection_add_filter(b->c, filter, b, NULL)) {
                acs_bus_free(b);
                return u ? -ENOMEM : -EIO;
        }
        b->fd = fd;
        *ret = b;
        return 0;
}

acs_bus *acs_bus_free(acs_bus *b)
{
        if (!b)
                return NULL;
        if (b->c) {
                if (b->unique)
                        dbus_connection_remove_filter(b->c, filter, b);
                dbus_connection_close(b->c);
                dbus_connection_unref(b->c);
        }
        free(b->unique);
        free(b);
        return NULL;
}

const char *acs_bus_unique_name(const acs_bus *b)
{
        return b->unique;
}

void acs_bus_set_handlers(acs_bus *b, acs_bus_message_fn on_message, acs_bus_gone_fn on_gone, void *userdata)
{
        b->on_message = on_message;
        b->on_gone = on_gone;
        b->userdata = userdata;
}

static bool connected(const acs_bus *b)
{
        return !b->disconnected && dbus_connection_get_is_connected(b->c);
}

int acs_bus_request_name(acs_bus *b, const char *name)
{
        if (!name || !dbus_validate_bus_name(name, NULL) || name[0] == ':')
                return -EINVAL;
        if (!connected(b))
                return -ECONNRESET;
        DBusError e;
        dbus_error_init(&e);
        int r = dbus_bus_request_name(b->c, name, DBUS_NAME_FLAG_DO_NOT_QUEUE, &e);
        if (r < 0) {
                r = map_error(&e);
                dbus_error_free(&e);
                return r;
        }
        if (r == DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER || r == DBUS_REQUEST_NAME_REPLY_ALREADY_OWNER)
                return 0;
        return -EEXIST;
}

/* A bus driver method call with one string argument, blocking; *ret_reply on success. */
static int driver_call(acs_bus *b, const char *method, const char *arg, DBusMessage **ret_reply)
{
        if (!connected(b))
                return -ECONNRESET;
        DBusMessage *m = dbus_message_new_method_call(DBUS_SERVICE_DBUS, DBUS_PATH_DBUS, DBUS_INTERFACE_DBUS, method);
        if (!m)
                return -ENOMEM;
        if (!dbus_message_append_args(m, DBUS_TYPE_STRING, &arg, DBUS_TYPE_INVALID)) {
                dbus_message_unref(m);
                return -ENOMEM;
        }
        DBusError e;
        dbus_error_init(&e);
        DBusMessage *reply = dbus_connection_send_with_reply_and_block(b->c, m, CALL_TIMEOUT_MS, &e);
        dbus_message_unref(m);
        if (!reply) {
                int r = map_error(&e);
                dbus_error_free(&e);
                return r;
        }
        *ret_reply = reply;
        return 0;
}

int acs_bus_name_owner(acs_bus *b, const char *name, char **ret)
{
        if (!name || !dbus_validate_bus_name(name, NULL))
                return -EINVAL;
        DBusMessage *reply = NULL;
        int r = driver_call(b, "GetNameOwner", name, &reply);
        if (r < 0)
                return r;
        const char *owner = NULL;
        if (!dbus_message_get_args(reply, NULL, DBUS_TYPE_STRING, &owner, DBUS_TYPE_INVALID) || owner[0] != ':') {
                dbus_message_unref(reply);
                return -EPROTO;
        }
        char *s = strdup(owner);
        dbus_message_unref(reply);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int acs_bus_peer_creds(acs_bus *b, const char *unique_name, pid_t *ret_pid, uid_t *ret_uid)
{
        if (!unique_name || unique_name[0] != ':' || !dbus_validate_bus_name(unique_name, NULL))
                return -EINVAL;
        DBusMessage *reply = NULL;
        int r = driver_call(b, "GetConnectionCredentials", unique_name, &reply);
        if (r < 0)
                return r;
        bool have_pid = false, have_uid = false;
        uint32_t pid = 0, uid = 0;
        DBusMessageIter it, dict;
        r = -EPROTO;
        if (!dbus_message_iter_init(reply, &it) || dbus_message_iter_get_arg_type(&it) != DBUS_TYPE_ARRAY ||
            dbus_message_iter_get_element_type(&it) != DBUS_TYPE_DICT_ENTRY)
                goto out;
        dbus_message_iter_recurse(&it, &dict);
        while (dbus_message_iter_get_arg_type(&dict) == DBUS_TYPE_DICT_ENTRY) {
                DBusMessageIter entry, var;
                const char *key = NULL;
                dbus_message_iter_recurse(&dict, &entry);
                if (dbus_message_iter_get_arg_type(&entry) != DBUS_TYPE_STRING)
                        goto out;
                dbus_message_iter_get_basic(&entry, &key);
                if (!dbus_message_iter_next(&entry) || dbus_message_iter_get_arg_type(&entry) != DBUS_TYPE_VARIANT)
                        goto out;
                dbus_message_iter_recurse(&entry, &var);
                bool is_u32 = dbus_message_iter_get_arg_type(&var) == DBUS_TYPE_UINT32;
                if (!strcmp(key, "ProcessID") && is_u32) {
                        dbus_message_iter_get_basic(&var, &pid);
                        have_pid = true;
                } else if (!strcmp(key, "UnixUserID") && is_u32) {
                        dbus_message_iter_get_basic(&var, &uid);
                        have_uid = true;
                }
                dbus_message_iter_next(&dict);
        }
        if (have_pid && have_uid && pid > 0 && pid <= INT_MAX) {
                *ret_pid = (pid_t)pid;
                *ret_uid = (uid_t)uid;
                r = 0;
        }
out:
        dbus_message_unref(reply);
        return r;
}

int acs_bus_watch_departures(acs_bus *b)
{
        if (!connected(b))
                return -ECONNRESET;
        DBusError e;
        dbus_error_init(&e);
        dbus_bus_add_match(b->c,
                           "type='signal',sender='" DBUS_SERVICE_DBUS "',interface='" DBUS_INTERFACE_DBUS
                           "',member='NameOwnerChanged',arg2=''",
                           &e);
        if (dbus_error_is_set(&e)) {
                int r = map_error(&e);
                dbus_error_free(&e);
                return r;
        }
        return 0;
}

int acs_bus_send(acs_bus *b, const char *dest, const void *msg, size_t len)
{
        if (!dest || !dbus_validate_bus_name(dest, NULL) || (!msg && len) || len == 0)
                return -EINVAL;
        if (len > ACS_BUS_MESSAGE_MAX)
                return -EMSGSIZE;
        if (!connected(b))
                return -ECONNRESET;
        DBusMessage *m = dbus_message_new_method_call(dest, ACS_BUS_PATH, ACS_BUS_INTERFACE, ACS_BUS_MEMBER);
        if (!m)
                return -ENOMEM;
        dbus_message_set_no_reply(m, TRUE);
        dbus_message_set_auto_start(m, FALSE);
        const uint8_t *p = msg;
        int n = (int)len;
        bool ok = dbus_message_append_args(m, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &p, n, DBUS_TYPE_INVALID) &&
                  dbus_connection_send(b->c, m, NULL);
        dbus_message_unref(m);
        return ok ? 0 : -ENOMEM;
}

int acs_bus_flush(acs_bus *b, int timeout_ms)
{
        int64_t deadline = timeout_ms < 0 ? INT64_MAX : mono_ms() + timeout_ms;
        while (dbus_connection_has_messages_to_send(b->c)) {
                if (!connected(b))
                        return -ECONNRESET;
                int64_t left = deadline - mono_ms();
                if (left <= 0)
                        return -ETIMEDOUT;
                struct pollfd p = {.fd = b->fd, .events = POLLOUT};
                int n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
                if (n < 0 && errno != EINTR)
                        return -errno;
                if (n > 0)
                        (void)dbus_connection_read_write(b->c, 0);
        }
        return connected(b) ? 0 : -ECONNRESET;
}

int acs_bus_fd(const acs_bus *b)
{
        return b->fd;
}

short acs_bus_poll_events(const acs_bus *b)
{
        return (short)(POLLIN | (dbus_connection_has_messages_to_send(b->c) ? POLLOUT : 0));
}

bool acs_bus_has_pending(const acs_bus *b)
{
        return dbus_connection_get_dispatch_status(b->c) == DBUS_DISPATCH_DATA_REMAINS;
}

int acs_bus_dispatch(acs_bus *b)
{
        if (!b->disconnected)
                (void)dbus_connection_read_write(b->c, 0);
        for (;;) {
                DBusDispatchStatus st = dbus_connection_dispatch(b->c);
                if (st == DBUS_DISPATCH_COMPLETE)
                        break;
                if (st == DBUS_DISPATCH_NEED_MEMORY)
                        return -ENOMEM;
        }
        return connected(b) ? 0 : -ECONNRESET;
}

int acs_bus_wait(acs_bus *b, int timeout_ms)
{
        if (!acs_bus_has_pending(b)) {
                struct pollfd p = {.fd = b->fd, .events = acs_bus_poll_events(b)};
                int n = poll(&p, 1, timeout_ms);
                if (n < 0)
                        return -errno;
        }
        return acs_bus_dispatch(b);
}

void acs_bus_shutdown(void)
{
        dbus_shutdown();
}
