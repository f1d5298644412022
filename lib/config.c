/* SPDX-License-Identifier: MIT */
/* The acs.conf loader: a table of keys over libinih, with strict "PATH:LINE: reason" errors. */
#include "acs/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "acs/mboxname.h"
#include "acs/util.h"

/*
 * How the text reaches libinih (Debian libinih 55, see docs/configuration.md):
 * we feed it through ini_parse_stream() with our own line reader instead of
 * ini_parse_string()/ini_parse_file(), because the Debian build calls the handler
 * without a line number (INI_HANDLER_LINENO is 0). The reader counts lines, so the
 * handler knows the line of every key. The reader also
 *  - strips a UTF-8 BOM and every line's leading blanks, which switches off inih's
 *    multi-line values (a continuation line is an indented line): an indented line is
 *    an ordinary line, and a line without '=' is a syntax error;
 *  - rejects lines longer than inih's buffer (inih would split them silently);
 *  - rejects NUL bytes;
 *  - checks [section] lines, so an empty unknown section is an error too.
 */

#define CONFIG_MAX_FILE_SIZE (1024 * 1024)

enum key_type {
        KEY_STRING,   /* free text, checked by key->check if set */
        KEY_PATH,     /* absolute path */
        KEY_BOOL,     /* yes/no/true/false/on/off/1/0 */
        KEY_UNSIGNED, /* decimal, min..max */
        KEY_MODE,     /* octal 0000..0777 */
        KEY_ENUM,     /* one of key->values */
};

/* An empty value means "unset" (NULL); only for strings and paths whose default is NULL. */
#define KEY_OPTIONAL 1u

struct enum_value {
        const char *name;
        int value;
};

struct key {
        const char *section;
        const char *name;
        enum key_type type;
        size_t offset;                   /* of the field in acs_config */
        const char *def_str;             /* KEY_STRING, KEY_PATH (NULL = unset) */
        unsigned def_num;                /* KEY_BOOL, KEY_UNSIGNED, KEY_MODE, KEY_ENUM */
        unsigned min, max;               /* KEY_UNSIGNED */
        const struct enum_value *values; /* KEY_ENUM, ended by { NULL } */
        /* Extra check of a string value: 0, or -EINVAL with *reason = what is accepted. */
        int (*check)(const char *value, const char **reason);
        unsigned flags;
        const char *help;
};

_Static_assert(sizeof(enum acs_cache_mode) == sizeof(int), "enum fields are stored as int");
_Static_assert(sizeof(enum acs_bus_mode) == sizeof(int), "enum fields are stored as int");

static const struct enum_value cache_modes[] = {
        { "memory", ACS_CACHE_MEMORY },
        { "persistent", ACS_CACHE_PERSISTENT },
        { NULL, 0 },
};

static const struct enum_value layouts[] = {
        { "fs", ACS_LAYOUT_FS },
        { "maildir++", ACS_LAYOUT_MAILDIRPP },
        { NULL, 0 },
};

static const struct enum_value bus_modes[] = {
        { "own", ACS_BUS_OWN },
        { "address", ACS_BUS_ADDRESS },
        { NULL, 0 },
};

static int check_imap_url(const char *value, const char **reason);
static int check_name(const char *value, const char **reason);
static int check_bus_address(const char *value, const char **reason);

#define OFF(field) offsetof(acs_config, field)

static const struct key keys[] = {
        { "imap", "url", KEY_STRING, OFF(imap_url), .def_str = "imaps://localhost:993",
          .check = check_imap_url,
          .help = "IMAP server: imaps://HOST[:PORT] (TLS) or imap://HOST[:PORT] (STARTTLS)" },
        { "imap", "ca", KEY_PATH, OFF(imap_ca), .flags = KEY_OPTIONAL,
          .help = "CA file to verify the server with; empty = system trust store" },
        { "imap", "insecure_plaintext", KEY_BOOL, OFF(imap_insecure_plaintext), .def_num = 0,
          .help = "imap:// without STARTTLS (passwords in clear; loopback tests only)" },

        { "cache", "mode", KEY_ENUM, OFF(cache_mode), .def_num = ACS_CACHE_MEMORY,
          .values = cache_modes, .help = "where user databases live: memory or persistent" },
        { "cache", "dir", KEY_PATH, OFF(cache_dir), .def_str = "/var/lib/acs",
          .help = "directory of persistent databases" },
        { "cache", "memory_dir", KEY_PATH, OFF(cache_memory_dir), .def_str = "/run/acs-cache",
          .help = "directory of memory databases (a tmpfs)" },

        { "tree", "root", KEY_PATH, OFF(tree_root), .def_str = "/run/acs",
          .help = "mount root; each user's tree is ROOT/USER" },
        { "tree", "layout", KEY_ENUM, OFF(tree_layout), .def_num = ACS_LAYOUT_FS,
          .values = layouts, .help = "folder layout: fs or maildir++" },
        { "tree", "owner", KEY_STRING, OFF(tree_owner), .def_str = "acs", .check = check_name,
          .help = "user owning the files of the tree" },
        { "tree", "group", KEY_STRING, OFF(tree_group), .def_str = "www-data", .check = check_name,
          .help = "group that may read the tree" },
        { "tree", "mode", KEY_MODE, OFF(tree_mode), .def_num = 0750,
          .help = "permission bits of the tree's directories (octal)" },

        { "session", "idle_timeout", KEY_UNSIGNED, OFF(session_idle_timeout), .def_num = 600,
          .min = 1, .max = 7 * 24 * 3600,
          .help = "seconds without a session before a user's instance stops" },
        { "session", "expiry", KEY_UNSIGNED, OFF(session_expiry), .def_num = 3600,
          .min = 1, .max = 30 * 24 * 3600,
          .help = "seconds a session stays valid after its last use" },
        { "session", "max_per_user", KEY_UNSIGNED, OFF(session_max_per_user), .def_num = 256,
          .min = 1, .max = 1000000, .help = "sessions one user may hold at once" },
        { "session", "admin_group", KEY_STRING, OFF(session_admin_group), .check = check_name,
          .flags = KEY_OPTIONAL, .help = "group whose members may run WHO and see every user" },

        { "socket", "path", KEY_PATH, OFF(socket_path), .def_str = "/run/acsd/acsd.sock",
          .help = "the control socket of acsd" },
        { "socket", "max_per_uid", KEY_UNSIGNED, OFF(socket_max_per_uid), .def_num = 32,
          .min = 1, .max = 65536, .help = "connections one uid may hold open at once" },
        { "socket", "allow_group", KEY_STRING, OFF(socket_allow_group), .check = check_name,
          .flags = KEY_OPTIONAL, .help = "group allowed to connect; empty = any user" },
        { "socket", "mode", KEY_MODE, OFF(socket_mode), .def_num = 0666,
          .help = "permission bits of the socket (octal)" },
        { "socket", "max_connections", KEY_UNSIGNED, OFF(socket_max_connections),
          .def_num = 4096, .min = 1, .max = 1000000,
          .help = "client connections at once, all uids together" },

        { "bus", "mode", KEY_ENUM, OFF(bus_mode), .def_num = ACS_BUS_OWN, .values = bus_modes,
          .help = "own: acsd starts its own dbus-daemon; address: use bus.address" },
        { "bus", "address", KEY_STRING, OFF(bus_address), .check = check_bus_address,
          .flags = KEY_OPTIONAL, .help = "D-Bus address to use with bus.mode = address" },
        { "bus", "max_connections", KEY_UNSIGNED, OFF(bus_max_connections), .def_num = 10000,
          .min = 1, .max = 1000000, .help = "connection limit of the private bus" },
        { "bus", "dir", KEY_PATH, OFF(bus_dir), .flags = KEY_OPTIONAL,
          .help = "directory of acsd's own bus socket; empty = DIR(socket.path)/bus" },

        { "limits", "max_users", KEY_UNSIGNED, OFF(limits_max_users), .def_num = 1000,
          .min = 1, .max = 1000000, .help = "users with a running instance at once" },
        { "limits", "login_failures", KEY_UNSIGNED, OFF(limits_login_failures), .def_num = 5,
          .min = 1, .max = 1000, .help = "failed logins per user/peer before slowing down" },
        { "limits", "login_delay_max", KEY_UNSIGNED, OFF(limits_login_delay_max), .def_num = 60,
          .min = 1, .max = 3600, .help = "longest delay of a failed login answer, seconds" },
        { "limits", "max_sessions", KEY_UNSIGNED, OFF(limits_max_sessions), .def_num = 10000,
          .min = 1, .max = 10000000, .help = "sessions of all users at once" },

        { "agent", "user", KEY_STRING, OFF(agent_user), .def_str = "acs", .check = check_name,
          .help = "unprivileged user running acs-syncd and acs-fs" },
        { "agent", "uid_min", KEY_UNSIGNED, OFF(agent_uid_min), .def_num = 0, .min = 0,
          .max = 4294967294u, .help = "first uid of the per-user agent range; 0 = no range" },
        { "agent", "uid_max", KEY_UNSIGNED, OFF(agent_uid_max), .def_num = 0, .min = 0,
          .max = 4294967294u, .help = "last uid of the per-user agent range; 0 = no range" },
};

#define N_KEYS ACS_ARRAY_SIZE(keys)

static const char *const sections[] = {
        "imap", "cache", "tree", "session", "socket", "bus", "limits", "agent",
};

static void *field(acs_config *cfg, const struct key *k) { return (char *)cfg + k->offset; }

static bool is_string_type(const struct key *k)
{
        return k->type == KEY_STRING || k->type == KEY_PATH;
}

/* ---- value checks ---- */

/* imaps://HOST[:PORT][/] or imap://...; HOST a name, an IPv4 address or [IPv6]. */
static int check_imap_url(const char *value, const char **reason)
{
        const char *p, *host;

        *reason = "expected imaps://HOST[:PORT] (TLS) or imap://HOST[:PORT] (STARTTLS)";
        if (strncmp(value, "imaps://", 8) == 0)
                p = value + 8;
        else if (strncmp(value, "imap://", 7) == 0)
                p = value + 7;
        else
                return -EINVAL;

        host = p;
        if (*p == '[') {
                p = strchr(p, ']');
                if (!p || p == host + 1)
                        return -EINVAL;
                for (const char *q = host + 1; q < p; q++)
                        if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.')
                                return -EINVAL;
                p++;
        } else {
                while (isalnum((unsigned char)*p) || *p == '-' || *p == '.' || *p == '_')
                        p++;
                if (p == host) {
                        *reason = "expected a host name after the scheme, as in "
                                  "imaps://HOST[:PORT]";
                        return -EINVAL;
                }
        }

        if (*p == ':') {
                unsigned long port = 0;
                const char *digits = ++p;

                while (*p >= '0' && *p <= '9' && p - digits < 6)
                        port = port * 10 + (unsigned long)(*p++ - '0');
                if (p == digits || port < 1 || port > 65535) {
                        *reason = "expected a port from 1 to 65535 after ':'";
                        return -EINVAL;
                }
        }
        if (*p == '/')
                p++;
        if (*p != '\0') {
                if (strchr(value, '@'))
                        *reason = "expected imaps://HOST[:PORT] without a user name (users "
                                  "come from the clients)";
                else
                        *reason = "expected imaps://HOST[:PORT] or imap://HOST[:PORT] (no "
                                  "path, no query)";
                return -EINVAL;
        }
        return 0;
}

/* A user or group name as useradd(8) and getpwnam(3) take them. */
static int check_name(const char *value, const char **reason)
{
        size_t n = strlen(value);

        *reason = "expected a user or group name (letters, digits, '_', '.', '-', not starting "
                  "with '-'; at most 32 characters)";
        if (n == 0 || n > 32 || value[0] == '-')
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)value[i];
                if (!isalnum(c) && c != '_' && c != '.' && c != '-' && !(c == '$' && i == n - 1))
                        return -EINVAL;
        }
        return 0;
}

/* TRANSPORT:KEY=VALUE[,...][;...], e.g. unix:path=/run/acs/bus (checked loosely). */
static int check_bus_address(const char *value, const char **reason)
{
        const char *colon = strchr(value, ':');

        *reason = "expected a D-Bus address such as unix:path=/run/acs/bus";
        if (!colon || colon == value)
                return -EINVAL;
        for (const char *p = value; p < colon; p++)
                if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
                        return -EINVAL;
        if (colon[1] != '\0' && !strchr(colon + 1, '='))
                return -EINVAL;
        return 0;
}

/* ---- defaults ---- */

static int config_defaults(acs_config *cfg)
{
        *cfg = (acs_config){ 0 };
        for (size_t i = 0; i < N_KEYS; i++) {
                const struct key *k = &keys[i];
                void *f = field(cfg, k);

                switch (k->type) {
                case KEY_STRING:
                case KEY_PATH:
                        if (k->def_str) {
                                char *s = strdup(k->def_str);
                                if (!s) {
                                        acs_config_clear(cfg);
                                        return -ENOMEM;
                                }
                                *(char **)f = s;
                        }
                        break;
                case KEY_BOOL:
                        *(bool *)f = k->def_num != 0;
                        break;
                case KEY_UNSIGNED:
                case KEY_MODE:
                        *(unsigned *)f = k->def_num;
                        break;
                case KEY_ENUM:
                        *(int *)f = (int)k->def_num;
                        break;
                }
        }
        return 0;
}

void acs_config_defaults(acs_config *cfg)
{
        /* The signature cannot report failure; a few short strdup()s failing is fatal. */
        if (config_defaults(cfg) < 0)
                abort();
}

void acs_config_clear(acs_config *cfg)
{
        if (!cfg)
                return;
        for (size_t i = 0; i < N_KEYS; i++)
                if (is_string_type(&keys[i]))
                        free(*(char **)field(cfg, &keys[i]));
        *cfg = (acs_config){ 0 };
}

/* ---- parse state and errors ---- */

struct parse_state {
        const char *name;     /* path or name, for messages */
        const char *text;     /* the whole input */
        size_t len;
        size_t pos;           /* start of the next line */
        unsigned line;        /* number of the line last handed to inih */
        bool indented;        /* that line began with blanks (which the reader removed) */
        acs_config cfg;       /* filled over the defaults */
        unsigned set_line[N_KEYS]; /* line where each key was set; 0 = default */
        char *error;          /* first error (lowest line), "NAME:LINE: reason" */
        unsigned error_line;
        bool nomem;
};

static void fail(struct parse_state *st, unsigned line, const char *fmt, ...) ACS_PRINTF(3, 4);

/* Records an error unless an earlier line already has one. */
static void fail(struct parse_state *st, unsigned line, const char *fmt, ...)
{
        _cleanup_free_ char *reason = NULL;
        char *msg = NULL;
        va_list ap;
        int r;

        if (st->error && st->error_line <= line)
                return;
        va_start(ap, fmt);
        r = vasprintf(&reason, fmt, ap);
        va_end(ap);
        if (r < 0) {
                reason = NULL;
                st->nomem = true;
                return;
        }
        if (line > 0)
                r = asprintf(&msg, "%s:%u: %s", st->name, line, reason);
        else
                r = asprintf(&msg, "%s: %s", st->name, reason);
        if (r < 0) {
                st->nomem = true;
                return;
        }
        free(st->error);
        st->error = msg;
        st->error_line = line;
}

/* ---- names and suggestions ---- */

/* Case-insensitive edit distance (short strings only; longer ones count as far). */
static unsigned edit_distance(const char *a, const char *b)
{
        size_t la = strlen(a), lb = strlen(b);
        unsigned row[64];

        if (la >= ACS_ARRAY_SIZE(row) || lb >= ACS_ARRAY_SIZE(row))
                return UINT_MAX;
        for (size_t j = 0; j <= lb; j++)
                row[j] = (unsigned)j;
        for (size_t i = 1; i <= la; i++) {
                unsigned diag = row[0];
                row[0] = (unsigned)i;
                for (size_t j = 1; j <= lb; j++) {
                        unsigned up = row[j];
                        unsigned cost = tolower((unsigned char)a[i - 1]) !=
                                        tolower((unsigned char)b[j - 1]);
                        unsigned best = diag + cost;
                        if (up + 1 < best)
                                best = up + 1;
                        if (row[j - 1] + 1 < best)
                                best = row[j - 1] + 1;
                        row[j] = best;
                        diag = up;
                }
        }
        return row[lb];
}

/* Close enough to be a typo: at most 2 edits, and fewer than half the word. */
static bool is_close(const char *known, unsigned d)
{
        size_t n = strlen(known);
        return d <= 2 && d * 2 < n + (n == 1);
}

static bool section_known(const char *s)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(sections); i++)
                if (strcmp(sections[i], s) == 0)
                        return true;
        return false;
}

static const char *closest_section(const char *s)
{
        const char *best = NULL;
        unsigned best_d = UINT_MAX;

        for (size_t i = 0; i < ACS_ARRAY_SIZE(sections); i++) {
                unsigned d = edit_distance(s, sections[i]);
                if (d < best_d && is_close(sections[i], d)) {
                        best = sections[i];
                        best_d = d;
                }
        }
        return best;
}

static void fail_unknown_section(struct parse_state *st, unsigned line, const char *s)
{
        const char *close = closest_section(s);

        if (close)
                fail(st, line, "unknown section [%s] (did you mean [%s]?)", s, close);
        else
                fail(st, line, "unknown section [%s] (known: [imap] [cache] [tree] [session] "
                     "[socket] [bus] [limits] [agent])", s);
}

static const struct key *find_key(const char *section, const char *name)
{
        for (size_t i = 0; i < N_KEYS; i++)
                if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
                        return &keys[i];
        return NULL;
}

/* The section a key name belongs to, if it is unique to one section. */
static const char *home_section(const char *name)
{
        const char *home = NULL;

        for (size_t i = 0; i < N_KEYS; i++)
                if (strcmp(keys[i].name, name) == 0) {
                        if (home && strcmp(home, keys[i].section) != 0)
                                return NULL;
                        home = keys[i].section;
                }
        return home;
}

static void fail_unknown_key(struct parse_state *st, const char *section, const char *name)
{
        const struct key *best = NULL;
        unsigned best_d = UINT_MAX;
        const char *home;
        const char *cont = st->indented
                ? " (an indented line does not continue the previous value)" : "";

        if (name[0] == '\0') {
                fail(st, st->line, "syntax error: missing key name before '='");
                return;
        }
        for (size_t i = 0; i < N_KEYS; i++) {
                unsigned d;
                if (strcmp(keys[i].section, section) != 0)
                        continue;
                d = edit_distance(name, keys[i].name);
                if (d < best_d && is_close(keys[i].name, d)) {
                        best = &keys[i];
                        best_d = d;
                }
        }
        if (best) {
                fail(st, st->line, "unknown key '%s' in [%s] (did you mean '%s'?)", name, section,
                     best->name);
                return;
        }
        home = home_section(name);
        if (home)
                fail(st, st->line, "unknown key '%s' in [%s] (it belongs in [%s])", name, section,
                     home);
        else
                fail(st, st->line, "unknown key '%s' in [%s]%s", name, section, cont);
}

/* Copies s without surrounding blanks into buf (for section names such as "[ imap ]"). */
static const char *trim(const char *s, char *buf, size_t size)
{
        size_t n;

        while (*s == ' ' || *s == '\t')
                s++;
        n = strlen(s);
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
                n--;
        if (n >= size)
                n = size - 1;
        memcpy(buf, s, n);
        buf[n] = '\0';
        return buf;
}

/* ---- values ---- */

static int parse_bool(const char *v, bool *ret)
{
        static const char *const yes[] = { "yes", "true", "on", "1" };
        static const char *const no[] = { "no", "false", "off", "0" };

        for (size_t i = 0; i < ACS_ARRAY_SIZE(yes); i++) {
                if (strcasecmp(v, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(v, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

/* Decimal digits only (no sign, no blanks), no overflow. */
static int parse_unsigned(const char *v, unsigned long long *ret)
{
        unsigned long long n = 0;

        if (*v == '\0')
                return -EINVAL;
        for (; *v; v++) {
                if (*v < '0' || *v > '9')
                        return -EINVAL;
                if (n > (ULLONG_MAX - 9) / 10)
                        return -ERANGE;
                n = n * 10 + (unsigned)(*v - '0');
        }
        *ret = n;
        return 0;
}

static void enum_names(const struct enum_value *values, char *buf, size_t size)
{
        size_t used = 0;

        buf[0] = '\0';
        for (size_t i = 0; values[i].name; i++) {
                const char *sep = i == 0 ? "" : values[i + 1].name ? ", " : " or ";
                int n = snprintf(buf + used, size - used, "%s%s", sep, values[i].name);
                if (n < 0 || (size_t)n >= size - used)
                        break;
                used += (size_t)n;
        }
}

/* A hint for values that look like they carry a '#' comment or quotes. */
static const char *value_hint(const char *v)
{
        size_t n = strlen(v);

        if (strstr(v, " #") || strstr(v, "\t#"))
                return " (inline comments start with ' ;', not '#')";
        if (n >= 2 && (v[0] == '"' || v[0] == '\'') && v[n - 1] == v[0])
                return " (values are taken literally: remove the quotes)";
        return "";
}

/* Parses value into the field of k, or records an error naming the key. */
static void set_value(struct parse_state *st, const struct key *k, const char *value)
{
        void *f = field(&st->cfg, k);
        const char *reason = NULL;
        char accepted[128];

        switch (k->type) {
        case KEY_STRING:
        case KEY_PATH: {
                char *copy = NULL;

                if (value[0] == '\0') {
                        if (!(k->flags & KEY_OPTIONAL)) {
                                if (k->type == KEY_PATH)
                                        reason = "expected an absolute path";
                                else if (!k->check || k->check(value, &reason) >= 0)
                                        reason = "expected a value";
                                fail(st, st->line, "%s.%s: empty value; %s", k->section, k->name,
                                     reason);
                                return;
                        }
                } else {
                        if (k->type == KEY_PATH && value[0] != '/')
                                reason = "expected an absolute path (starting with '/')";
                        else if (k->check && k->check(value, &reason) >= 0)
                                reason = NULL;
                        if (reason) {
                                fail(st, st->line, "%s.%s: bad value '%s': %s%s", k->section,
                                     k->name, value, reason, value_hint(value));
                                return;
                        }
                        copy = strdup(value);
                        if (!copy) {
                                st->nomem = true;
                                return;
                        }
                }
                free(*(char **)f);
                *(char **)f = copy;
                return;
        }
        case KEY_BOOL:
                if (parse_bool(value, (bool *)f) < 0)
                        fail(st, st->line, "%s.%s: bad value '%s': expected yes, no, true, false, "
                             "on, off, 1 or 0%s", k->section, k->name, value, value_hint(value));
                return;
        case KEY_UNSIGNED: {
                unsigned long long n;

                if (parse_unsigned(value, &n) < 0 || n < k->min || n > k->max) {
                        fail(st, st->line, "%s.%s: bad value '%s': expected a whole number from "
                             "%u to %u%s", k->section, k->name, value, k->min, k->max,
                             value_hint(value));
                        return;
                }
                *(unsigned *)f = (unsigned)n;
                return;
        }
        case KEY_MODE: {
                unsigned m = 0;
                size_t n = strlen(value);
                bool ok = n >= 1 && n <= 4;

                for (size_t i = 0; ok && i < n; i++) {
                        ok = value[i] >= '0' && value[i] <= '7';
                        m = m * 8 + (unsigned)(value[i] - '0');
                }
                if (!ok || m > 0777) {
                        fail(st, st->line, "%s.%s: bad value '%s': expected an octal mode from "
                             "0000 to 0777, such as 0750%s", k->section, k->name, value,
                             value_hint(value));
                        return;
                }
                *(unsigned *)f = m;
                return;
        }
        case KEY_ENUM:
                for (size_t i = 0; k->values[i].name; i++)
                        if (strcasecmp(value, k->values[i].name) == 0) {
                                *(int *)f = k->values[i].value;
                                return;
                        }
                enum_names(k->values, accepted, sizeof(accepted));
                fail(st, st->line, "%s.%s: bad value '%s': expected %s%s", k->section, k->name,
                     value, accepted, value_hint(value));
                return;
        }
}

/* ---- inih callbacks ---- */

static int handler(void *user, const char *section_raw, const char *name, const char *value)
{
        struct parse_state *st = user;
        char section[64];
        const struct key *k;
        size_t idx;

        if (st->error || st->nomem)
                return 0;
        trim(section_raw, section, sizeof(section));
        if (section[0] == '\0') {
                const char *home = home_section(name);
                if (home)
                        fail(st, st->line, "key '%s' outside a section (put it under [%s])", name,
                             home);
                else
                        fail(st, st->line, "key '%s' outside a section (start with a [section] "
                             "line)", name);
                return 0;
        }
        if (!section_known(section)) {
                fail_unknown_section(st, st->line, section);
                return 0;
        }
        k = find_key(section, name);
        if (!k) {
                fail_unknown_key(st, section, name);
                return 0;
        }
        idx = (size_t)(k - keys);
        if (st->set_line[idx]) {
                fail(st, st->line, "duplicate key %s.%s (first set on line %u)", k->section,
                     k->name, st->set_line[idx]);
                return 0;
        }
        st->set_line[idx] = st->line;
        set_value(st, k, value);
        return !st->error && !st->nomem;
}

/* Checks a "[section]" line as inih will read it (up to the first ']'). */
static void check_section_line(struct parse_state *st, const char *line, size_t n)
{
        const char *end = memchr(line, ']', n);
        char raw[64], name[64];
        size_t len;

        if (!end)
                return; /* inih reports the syntax error */
        for (const char *p = end + 1; p < line + n; p++) {
                if (*p == ';' || *p == '#')
                        break;
                if (*p != ' ' && *p != '\t') {
                        fail(st, st->line, "syntax error: text after ']' of a section header");
                        return;
                }
        }
        len = (size_t)(end - line - 1);
        if (len >= sizeof(raw))
                len = sizeof(raw) - 1;
        memcpy(raw, line + 1, len);
        raw[len] = '\0';
        trim(raw, name, sizeof(name));
        if (!section_known(name))
                fail_unknown_section(st, st->line, name);
}

/* fgets-style reader over st->text; see the comment at the top of this file. */
static char *reader(char *str, int num, void *stream)
{
        struct parse_state *st = stream;
        const char *start, *nl;
        size_t n;

        if (st->error || st->nomem || st->pos >= st->len)
                return NULL;
        start = st->text + st->pos;
        nl = memchr(start, '\n', st->len - st->pos);
        n = nl ? (size_t)(nl - start) : st->len - st->pos;
        st->pos += n + (nl != NULL);
        st->line++;

        if (memchr(start, '\0', n)) {
                fail(st, st->line, "NUL byte in the line");
                return NULL;
        }
        if (st->line == 1 && n >= 3 && memcmp(start, "\xEF\xBB\xBF", 3) == 0) {
                start += 3;
                n -= 3;
        }
        st->indented = n > 0 && (*start == ' ' || *start == '\t');
        while (n > 0 && (*start == ' ' || *start == '\t')) {
                start++;
                n--;
        }
        if (n > 0 && start[n - 1] == '\r')
                n--;
        /* inih needs room for the line, '\n' and '\0'; 3 less than its buffer, as ini.h says. */
        if (num < 4 || n > (size_t)num - 3) {
                fail(st, st->line, "line too long (at most %d characters)", num - 3);
                return NULL;
        }
        memcpy(str, start, n);
        str[n] = '\n';
        str[n + 1] = '\0';
        if (n > 0 && start[0] == '[')
                check_section_line(st, start, n);
        return str;
}

/* Describes inih's syntax error on line `line` from the text of that line. */
static void fail_syntax(struct parse_state *st, unsigned line)
{
        const char *p = st->text, *end = st->text + st->len;

        for (unsigned i = 1; i < line && p < end; i++) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                p = nl ? nl + 1 : end;
        }
        if (line == 1 && end - p >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
                p += 3;
        const char *text_start = p;
        while (p < end && (*p == ' ' || *p == '\t'))
                p++;
        if (p < end && *p == '[')
                fail(st, line, "syntax error: '[' without a closing ']'");
        else
                fail(st, line, "syntax error: expected 'key = value', '[section]' or a comment "
                     "(';' or '#' at the start of the line)%s",
                     p > text_start ? "; an indented line does not continue the previous value"
                                    : "");
}

/* ---- cross-field checks ---- */

static unsigned line_of(const struct parse_state *st, const char *section, const char *name)
{
        const struct key *k = find_key(section, name);
        return k ? st->set_line[k - keys] : 0;
}

static void check_config(struct parse_state *st)
{
        const acs_config *c = &st->cfg;

        if (c->bus_mode == ACS_BUS_ADDRESS && !c->bus_address)
                fail(st, line_of(st, "bus", "mode"),
                     "bus.mode = address needs bus.address (a D-Bus address such as "
                     "unix:path=/run/acs/bus)");
        if (c->bus_mode == ACS_BUS_OWN && c->bus_address)
                fail(st, line_of(st, "bus", "address"),
                     "bus.address is set but bus.mode is own (set bus.mode = address to use it)");
        if (c->imap_insecure_plaintext && c->imap_url && strncmp(c->imap_url, "imap://", 7) != 0)
                fail(st, line_of(st, "imap", "insecure_plaintext"),
                     "imap.insecure_plaintext = yes needs an imap:// url (imaps:// always uses "
                     "TLS; imap.url is %s)", c->imap_url);
        if (c->imap_insecure_plaintext && c->imap_ca)
                fail(st, line_of(st, "imap", "ca"),
                     "imap.ca is set but imap.insecure_plaintext = yes uses no TLS");
        if (c->bus_mode == ACS_BUS_ADDRESS && c->bus_dir)
                fail(st, line_of(st, "bus", "dir"),
                     "bus.dir is set but bus.mode is address (bus.dir is where acsd's own bus "
                     "lives)");
        if ((c->agent_uid_min == 0) != (c->agent_uid_max == 0)) {
                bool min_set = c->agent_uid_min != 0;
                fail(st, line_of(st, "agent", min_set ? "uid_min" : "uid_max"),
                     "agent.%s is set but agent.%s is not (set both for a per-user uid range, "
                     "or neither)", min_set ? "uid_min" : "uid_max", min_set ? "uid_max" : "uid_min");
        } else if (c->agent_uid_min > c->agent_uid_max) {
                fail(st, line_of(st, "agent", "uid_max"),
                     "agent.uid_max (%u) is below agent.uid_min (%u)", c->agent_uid_max,
                     c->agent_uid_min);
        } else if (c->agent_uid_min && c->agent_uid_max - c->agent_uid_min + 1u < c->limits_max_users) {
                fail(st, line_of(st, "agent", "uid_max"),
                     "agent.uid_min..uid_max holds %u uids, fewer than limits.max_users (%u): "
                     "every running user needs its own uid", c->agent_uid_max - c->agent_uid_min + 1u,
                     c->limits_max_users);
        }
}

/* ---- entry points ---- */

static int load_text(const char *text, size_t len, const char *name, acs_config *ret,
                     char **ret_error)
{
        struct parse_state st = { .name = name, .text = text, .len = len };
        int r;

        r = config_defaults(&st.cfg);
        if (r < 0)
                goto fail_nomem;

        r = ini_parse_stream(reader, &st, handler, &st);
        if (r == -2 || st.nomem)
                goto fail_nomem;
        if (r > 0 && (!st.error || (unsigned)r < st.error_line))
                fail_syntax(&st, (unsigned)r);
        if (!st.error && r == 0)
                check_config(&st);
        if (st.nomem)
                goto fail_nomem;
        if (st.error || r != 0) {
                acs_config_clear(&st.cfg);
                if (ret_error)
                        *ret_error = TAKE_PTR(st.error);
                free(st.error);
                return -EINVAL;
        }
        *ret = st.cfg;
        return 0;

fail_nomem:
        acs_config_clear(&st.cfg);
        free(st.error);
        if (ret_error)
                *ret_error = NULL;
        return -ENOMEM;
}

int acs_config_load_string(const char *text, const char *name, acs_config *ret, char **ret_error)
{
        if (!text || !ret)
                return -EINVAL;
        return load_text(text, strlen(text), name ? name : "(string)", ret, ret_error);
}

/* Sets *ret_error to "PATH: strerror(-r)" (or NULL without memory) and returns r. */
static int file_error(const char *path, int r, const char *what, char **ret_error)
{
        if (ret_error && asprintf(ret_error, "%s: %s", path, what ? what : strerrordesc_np(-r)) < 0)
                *ret_error = NULL;
        return r;
}

int acs_config_load(const char *path, acs_config *ret, char **ret_error)
{
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t len = 0, size = 0;

        if (!path || !ret)
                return -EINVAL;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return file_error(path, -errno, NULL, ret_error);
        for (;;) {
                ssize_t n;

                if (size - len < 4096) {
                        size_t nsize = size ? size * 2 : 16384;
                        char *nbuf;
                        if (nsize > CONFIG_MAX_FILE_SIZE + 1)
                                nsize = CONFIG_MAX_FILE_SIZE + 1;
                        if (nsize <= len)
                                return file_error(path, -EFBIG, "file too large (at most 1 MiB)",
                                                  ret_error);
                        nbuf = realloc(buf, nsize);
                        if (!nbuf)
                                return file_error(path, -ENOMEM, NULL, ret_error);
                        buf = nbuf;
                        size = nsize;
                }
                n = read(fd, buf + len, size - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return file_error(path, -errno, NULL, ret_error);
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        if (len > CONFIG_MAX_FILE_SIZE)
                return file_error(path, -EFBIG, "file too large (at most 1 MiB)", ret_error);
        return load_text(buf, len, path, ret, ret_error);
}

unsigned acs_config_line_of(const char *path, const char *section, const char *key)
{
        FILE *f;
        char *line = NULL, cur[64] = "";
        size_t size = 0, klen;
        unsigned n = 0, found = 0;

        if (!path || !section || !key || !(f = fopen(path, "re")))
                return 0;
        klen = strlen(key);
        while (!found && getline(&line, &size, f) >= 0) {
                char *p = line;
                n++;
                if (n == 1 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
                        p += 3;
                while (*p == ' ' || *p == '\t')
                        p++;
                if (*p == '[') {
                        char *end = strchr(p, ']');
                        if (end) {
                                *end = '\0';
                                trim(p + 1, cur, sizeof(cur));
                        }
                        continue;
                }
                if (strcmp(cur, section) != 0 || strncmp(p, key, klen) != 0)
                        continue;
                p += klen;
                while (*p == ' ' || *p == '\t')
                        p++;
                if (*p == '=' || *p == ':')
                        found = n;
        }
        free(line);
        fclose(f);
        return found;
}
