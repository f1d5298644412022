/* SPDX-License-Identifier: MIT */
/* acsd's main: options and config, limits, capabilities and non-dumpability, startup and shutdown order of the parts. */
#include "acsd.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "acs/log.h"
#include "acs/util.h"
#include "acs/wire.h"
#include "vault.h"

/*
 * Order at start: non-dumpable and no core dumps (before anything secret exists), config,
 * names resolved, descriptor limit, (detach), loop and signals, instances (vault, bus,
 * agents' directories), sessions, the socket last: once the socket file exists, acsd
 * answers. Order at stop (SIGTERM/SIGINT): the socket goes (no new clients), every
 * instance stops cleanly (pending opens and syncs are answered "unavailable", watchers
 * get EVENT closed), then the connections and sessions go and acsd exits 0. A second
 * signal stops at once (instances are torn down synchronously: unmount, SIGKILL).
 */

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: acsd [-c FILE] [--foreground] [--log-level LEVEL] [--check]\n"
                "            [--syncd PATH] [--fs PATH] [--dbus-daemon PATH]\n"
                "The acs control daemon (docs/configuration.md, \"Running acsd\").\n"
                "  -c, --config FILE    configuration (default " ACS_CONFIG_DEFAULT_PATH ")\n"
                "  -f, --foreground     do not detach; log to stderr\n"
                "  -l, --log-level L    debug, info (default), notice, warning, err\n"
                "      --check          check the configuration and exit\n"
                "      --syncd PATH     the acs-syncd program (default: next to acsd)\n"
                "      --fs PATH        the acs-fs program (default: next to acsd)\n"
                "      --dbus-daemon P  dbus-daemon for bus.mode = own (default: from PATH)\n"
                "  -h, --help           this text\n");
}

/* Absolute path of a program next to acsd (or in the build tree's sibling folder). */
static char *find_program(const char *name, const char *subdir)
{
        char exe[PATH_MAX], path[PATH_MAX + 64];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n <= 0)
                return NULL;
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (!slash)
                return NULL;
        *slash = 0;
        snprintf(path, sizeof(path), "%s/%s", exe, name);
        if (access(path, X_OK) == 0)
                return strdup(path);
        snprintf(path, sizeof(path), "%s/../%s/%s", exe, subdir, name);
        char real[PATH_MAX];
        if (access(path, X_OK) == 0 && realpath(path, real))
                return strdup(real);
        return NULL;
}

/* "PATH:LINE: " for section.key, or "PATH: " when the key is not in the file. */
static void print_where(const char *path, const char *section, const char *key)
{
        unsigned line = acs_config_line_of(path, section, key);
        if (line)
                fprintf(stderr, "acsd: %s:%u: ", path, line);
        else
                fprintf(stderr, "acsd: %s: ", path);
}

static int resolve_group(const char *path, const char *section, const char *key, const char *name,
                         gid_t *ret)
{
        errno = 0;
        struct group *g = getgrnam(name);
        if (!g) {
                int e = errno;
                print_where(path, section, key);
                fprintf(stderr, "%s.%s = %s: no such group on this host%s%s\n", section, key, name,
                        e ? ": " : "", e ? strerror(e) : "");
                return -ENOENT;
        }
        if (ret)
                *ret = g->gr_gid;
        return 0;
}

static int resolve_user(const char *path, const char *section, const char *key, const char *name)
{
        errno = 0;
        if (!getpwnam(name)) {
                int e = errno;
                print_where(path, section, key);
                fprintf(stderr, "%s.%s = %s: no such user on this host%s%s\n", section, key, name,
                        e ? ": " : "", e ? strerror(e) : "");
                return -ENOENT;
        }
        return 0;
}

/* Raises RLIMIT_NOFILE to fit the connections and instances the config allows. */
static int raise_fd_limit(const acs_config *cfg)
{
        struct rlimit rl;
        rlim_t need = (rlim_t)cfg->socket_max_connections + (rlim_t)cfg->limits_max_users * 8 + 256;
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return -errno;
        if (rl.rlim_cur >= need)
                return 0;
        if (rl.rlim_max < need)
                rl.rlim_max = need; /* root may raise the hard limit (up to fs.nr_open) */
        rl.rlim_cur = need;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
                int r = -errno;
                acs_log(LOG_ERR, "cannot raise the descriptor limit to %llu (socket.max_connections %u "
                        "+ 8 per user of limits.max_users %u): %m", (unsigned long long)need,
                        cfg->socket_max_connections, cfg->limits_max_users);
                return r;
        }
        return 0;
}

/*
 * acsd stays root (it mounts, starts agents as other uids, removes their caches), but
 * keeps only the capabilities that needs: the rest leave its bounding set (so no child
 * it starts as root, such as its dbus-daemon, can get them back either) and its
 * effective and permitted sets. A capability change resets PR_SET_DUMPABLE: the caller
 * clears it again.
 */
static const int kept_caps[] = {
        CAP_CHOWN,            /* agents' caches and directories */
        CAP_DAC_OVERRIDE,     /* ... of other uids */
        CAP_DAC_READ_SEARCH,
        CAP_FOWNER,
        CAP_FSETID,
        CAP_KILL,             /* stopping agents (other uids) */
        CAP_SETGID,           /* starting agents as their uid */
        CAP_SETUID,
        CAP_SETPCAP,          /* dropping from the bounding set */
        CAP_NET_BIND_SERVICE, /* a TLS port below 1024 (a later stage) */
        CAP_IPC_LOCK,         /* locked memory for keys and the vault */
        CAP_SYS_ADMIN,        /* mount(2) and umount2(2) of the users' trees */
        CAP_SYS_RESOURCE,     /* the descriptor limit */
};

static int drop_capabilities(void)
{
        uint64_t keep = 0;
        for (size_t i = 0; i < ACS_ARRAY_SIZE(kept_caps); i++)
                keep |= 1ull << kept_caps[i];
        int last = CAP_LAST_CAP;
        FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
        if (f) {
                if (fscanf(f, "%d", &last) != 1 || last < 0 || last > 63)
                        last = CAP_LAST_CAP;
                fclose(f);
        }
        for (int cap = 0; cap <= last; cap++)
                if (!(keep & (1ull << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
                        return -errno;
        struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
        struct __user_cap_data_struct data[2];
        if (syscall(SYS_capget, &hdr, data) < 0)
                return -errno;
        for (int i = 0; i < 2; i++) {
                uint32_t k = (uint32_t)(keep >> (32 * i));
                data[i].effective &= k;
                data[i].permitted &= k;
                data[i].inheritable = 0;
        }
        if (syscall(SYS_capset, &hdr, data) < 0)
                return -errno;
        return 0;
}

/* ---- detaching: the parent exits when the child is ready (or failed) ---- */

static int ready_fd = -1;

static int detach(void)
{
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid > 0) {
                close(p[1]);
                char c = 0;
                ssize_t n;
                do
                        n = read(p[0], &c, 1);
                while (n < 0 && errno == EINTR);
                _exit(n == 1 && c == 'R' ? 0 : 1);
        }
        close(p[0]);
        ready_fd = p[1];
        if (setsid() < 0)
                return -errno;
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) {
                dup2(null, 0);
                dup2(null, 1);
                if (null > 2)
                        close(null);
        }
        return 0;
}

static void tell_ready(void)
{
        if (ready_fd >= 0) {
                (void)!write(ready_fd, "R", 1);
                close(ready_fd);
                ready_fd = -1;
                /* stderr was kept until now so startup errors reach the caller */
                int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
                if (null >= 0) {
                        dup2(null, 2);
                        close(null);
                }
        }
        sd_notify(0, "READY=1");
}

/* ---- signals and shutdown ---- */

static void on_shutdown_done(void *ud)
{
        acsd *d = ud;
        acs_log(LOG_INFO, "every instance stopped");
        acs_loop_quit(d->loop, 0);
}

static void on_signal(acs_loop *l, const struct signalfd_siginfo *si, void *userdata)
{
        acsd *d = userdata;
        switch (si->ssi_signo) {
        case SIGTERM:
        case SIGINT:
                if (d->stopping) {
                        acs_log(LOG_NOTICE, "second %s: stopping at once", strsignal((int)si->ssi_signo));
                        acs_loop_quit(l, 1);
                        return;
                }
                acs_log(LOG_INFO, "%s from pid %u: stopping", strsignal((int)si->ssi_signo), si->ssi_pid);
                sd_notify(0, "STOPPING=1");
                d->stopping = true;
                acsd_server_close_listener(d);
                inst_shutdown_all(d->inst, on_shutdown_done, d);
                break;
        case SIGHUP:
                acs_log(LOG_NOTICE, "SIGHUP ignored: the configuration is read at start only");
                break;
        default:
                break;
        }
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                { "config", required_argument, NULL, 'c' },
                { "foreground", no_argument, NULL, 'f' },
                { "log-level", required_argument, NULL, 'l' },
                { "check", no_argument, NULL, 'C' },
                { "syncd", required_argument, NULL, 'S' },
                { "fs", required_argument, NULL, 'F' },
                { "dbus-daemon", required_argument, NULL, 'D' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *config_path = ACS_CONFIG_DEFAULT_PATH, *syncd_arg = NULL, *fs_arg = NULL,
                   *dbus_arg = NULL;
        bool foreground = false, check = false;
        int prio = LOG_INFO, c, r;

        /*
         * First of all, before any secret exists: non-dumpable (no core dump, no ptrace by
         * our uid, /proc/PID/mem and friends root's). RLIMIT_CORE is left alone on purpose:
         * the flag alone must (and does) keep acsd from dumping, and a test checks that.
         */
        r = acs_vault_nodump();
        if (r < 0) {
                fprintf(stderr, "acsd: cannot make the process non-dumpable: %s\n", strerror(-r));
                return EX_OSERR;
        }

        while ((c = getopt_long(argc, argv, "c:fl:h", opts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        config_path = optarg;
                        break;
                case 'f':
                        foreground = true;
                        break;
                case 'l':
                        if (acs_log_parse_level(optarg, &prio) < 0) {
                                fprintf(stderr, "acsd: --log-level: expected debug, info, notice, warning or err\n");
                                return EX_USAGE;
                        }
                        break;
                case 'C':
                        check = true;
                        break;
                case 'S':
                        syncd_arg = optarg;
                        break;
                case 'F':
                        fs_arg = optarg;
                        break;
                case 'D':
                        dbus_arg = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return EX_USAGE;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "acsd: unexpected argument '%s'\n", argv[optind]);
                usage(stderr);
                return EX_USAGE;
        }

        acsd d = { .config_path = config_path, .foreground = foreground };
        _cleanup_free_ char *err = NULL, *syncd_path = NULL, *fs_path = NULL, *run_dir = NULL;
        r = acs_config_load(config_path, &d.cfg, &err);
        if (r < 0) {
                fprintf(stderr, "acsd: %s\n", err ? err : strerror(-r));
                return r == -EINVAL ? EX_CONFIG : r == -ENOENT || r == -EACCES ? EX_NOINPUT : EX_CONFIG;
        }
        if (d.cfg.session_admin_group) {
                if (resolve_group(config_path, "session", "admin_group", d.cfg.session_admin_group,
                                  &d.admin_gid) < 0)
                        goto config_error;
                d.has_admin_gid = true;
        }
        if (d.cfg.socket_allow_group) {
                if (resolve_group(config_path, "socket", "allow_group", d.cfg.socket_allow_group,
                                  &d.allow_gid) < 0)
                        goto config_error;
                d.has_allow_gid = true;
        }
        if (resolve_user(config_path, "agent", "user", d.cfg.agent_user) < 0 ||
            resolve_user(config_path, "tree", "owner", d.cfg.tree_owner) < 0 ||
            resolve_group(config_path, "tree", "group", d.cfg.tree_group, NULL) < 0)
                goto config_error;
        if (check) {
                printf("%s: ok\n", config_path);
                acs_config_clear(&d.cfg);
                return 0;
        }
        if (geteuid() != 0) {
                fprintf(stderr, "acsd: must run as root (it mounts the users' trees and starts their "
                        "agents as other uids)\n");
                acs_config_clear(&d.cfg);
                return EX_NOPERM;
        }

        syncd_path = syncd_arg ? strdup(syncd_arg) : find_program("acs-syncd", "syncd");
        fs_path = fs_arg ? strdup(fs_arg) : find_program("acs-fs", "fs");
        if (!syncd_path || access(syncd_path, X_OK) < 0 || !fs_path || access(fs_path, X_OK) < 0) {
                fprintf(stderr, "acsd: cannot find %s (give --syncd PATH and --fs PATH)\n",
                        !syncd_path || access(syncd_path, X_OK) < 0 ? "acs-syncd" : "acs-fs");
                acs_config_clear(&d.cfg);
                return EX_UNAVAILABLE;
        }

        acs_log_init("acsd", foreground ? ACS_LOG_AUTO : ACS_LOG_JOURNAL, prio);
        if (acs_wire_init() < 0) {
                acs_log(LOG_CRIT, "libsodium failed to initialize");
                acs_config_clear(&d.cfg);
                return EX_SOFTWARE;
        }
        umask(022);
        if (raise_fd_limit(&d.cfg) < 0) {
                acs_config_clear(&d.cfg);
                return EX_OSERR;
        }
        r = drop_capabilities();
        if (r >= 0)
                r = acs_vault_nodump(); /* a capability change resets it */
        if (r < 0) {
                fprintf(stderr, "acsd: dropping capabilities / staying non-dumpable: %s\n", strerror(-r));
                acs_config_clear(&d.cfg);
                return EX_OSERR;
        }
        if (!foreground && (r = detach()) < 0) {
                fprintf(stderr, "acsd: cannot detach: %s\n", strerror(-r));
                acs_config_clear(&d.cfg);
                return EX_OSERR;
        }

        /* the bus's directory: bus.dir, or "bus" next to the socket */
        if (d.cfg.bus_dir) {
                run_dir = strdup(d.cfg.bus_dir);
        } else {
                const char *slash = strrchr(d.cfg.socket_path, '/');
                if (asprintf(&run_dir, "%.*s/bus", (int)(slash - d.cfg.socket_path), d.cfg.socket_path) < 0)
                        run_dir = NULL;
        }
        int exit_code = EX_SOFTWARE;
        if (!run_dir) {
                acs_log(LOG_CRIT, "out of memory");
                goto out;
        }
        r = acsd_mkdir_parents(run_dir, 0755);
        if (r < 0 || chmod(run_dir, 0755) < 0) {
                acs_log(LOG_ERR, "cannot create %s: %s", run_dir, strerror(r < 0 ? -r : errno));
                exit_code = EX_CANTCREAT;
                goto out;
        }

        r = acs_loop_new(&d.loop);
        if (r >= 0)
                r = acs_loop_signals(d.loop, on_signal, &d);
        if (r < 0) {
                acs_log(LOG_CRIT, "event loop: %s", strerror(-r));
                exit_code = EX_OSERR;
                goto out;
        }

        inst_opts io = {
                .syncd_path = syncd_path,
                .fs_path = fs_path,
                .run_dir = run_dir,
                .dbus_daemon = dbus_arg,
                .uid_min = d.cfg.agent_uid_min,
                .uid_max = d.cfg.agent_uid_max,
                .keep_env_sanitizers = getenv("ASAN_OPTIONS") || getenv("UBSAN_OPTIONS") ||
                                       getenv("LSAN_OPTIONS"),
        };
        r = inst_mgr_new(d.loop, &d.cfg, &io, &d.inst);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot start the instance manager (vault, bus, directories): %s",
                        strerror(-r));
                exit_code = r == -ENOENT ? EX_CONFIG : EX_UNAVAILABLE;
                goto out;
        }
        /* the instance manager may have changed what the kernel resets: clear it again */
        r = acs_vault_nodump();
        if (r < 0) {
                acs_log(LOG_CRIT, "cannot make acsd non-dumpable: %s", strerror(-r));
                exit_code = EX_OSERR;
                goto out;
        }
        r = acsd_sessions_start(&d);
        if (r < 0) {
                acs_log(LOG_CRIT, "sessions: %s", strerror(-r));
                goto out;
        }
        r = acsd_server_start(&d);
        if (r < 0) {
                exit_code = EX_CANTCREAT;
                goto out;
        }
        acs_log(LOG_INFO, "ready: socket %s, tree root %s, cache %s, bus %s", d.cfg.socket_path,
                d.cfg.tree_root, d.cfg.cache_mode == ACS_CACHE_PERSISTENT ? d.cfg.cache_dir : d.cfg.cache_memory_dir,
                d.cfg.bus_mode == ACS_BUS_OWN ? run_dir : d.cfg.bus_address);
        tell_ready();

        r = acs_loop_run(d.loop);
        exit_code = r == 0 ? 0 : EX_SOFTWARE;
        if (r < 0)
                acs_log(LOG_CRIT, "event loop failed: %s", strerror(-r));

out:
        acsd_server_close_listener(&d);
        /* sessions first without touching instances (which go next, all at once) */
        acsd_sessions_stop(&d, false);
        acsd_server_stop(&d);
        acsd_sessions_free(&d);
        d.inst = inst_mgr_free(d.inst);
        d.loop = acs_loop_free(d.loop);
        acs_config_clear(&d.cfg);
        if (exit_code == 0)
                acs_log(LOG_INFO, "stopped");
        return exit_code;

config_error:
        acs_config_clear(&d.cfg);
        return EX_CONFIG;
}
