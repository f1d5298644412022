/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/config.c: defaults, tables of good and bad configs, files, the example. */
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "acs/config.h"
#include "acs/mboxname.h"
#include "acs/util.h"

/* ---- helpers ---- */

static bool str_eq(const char *a, const char *b)
{
        return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Compares every field, naming each one that differs; returns the number of differences. */
static int config_diff(const char *what, const acs_config *got, const acs_config *want)
{
        int n = 0;
#define DIFF_STR(f)                                                                           \
        if (!str_eq(got->f, want->f)) {                                                       \
                printf("#   %s: " #f " = \"%s\", expected \"%s\"\n", what,                  \
                       got->f ? got->f : "(null)", want->f ? want->f : "(null)");            \
                n++;                                                                          \
        }
#define DIFF_NUM(f)                                                                           \
        if ((long long)got->f != (long long)want->f) {                                        \
                printf("#   %s: " #f " = %lld, expected %lld\n", what, (long long)got->f,     \
                       (long long)want->f);                                                   \
                n++;                                                                          \
        }
        DIFF_STR(imap_url) DIFF_STR(imap_ca) DIFF_NUM(imap_insecure_plaintext)
        DIFF_NUM(cache_mode) DIFF_STR(cache_dir) DIFF_STR(cache_memory_dir)
        DIFF_STR(tree_root) DIFF_NUM(tree_layout) DIFF_STR(tree_owner) DIFF_STR(tree_group)
        DIFF_NUM(tree_mode)
        DIFF_NUM(session_idle_timeout) DIFF_NUM(session_expiry) DIFF_NUM(session_max_per_user)
        DIFF_STR(session_admin_group)
        DIFF_STR(socket_path) DIFF_NUM(socket_max_per_uid) DIFF_STR(socket_allow_group)
        DIFF_NUM(socket_mode) DIFF_NUM(socket_max_connections)
        DIFF_NUM(bus_mode) DIFF_STR(bus_address) DIFF_NUM(bus_max_connections) DIFF_STR(bus_dir)
        DIFF_NUM(limits_max_users) DIFF_NUM(limits_login_failures)
        DIFF_NUM(limits_login_delay_max) DIFF_NUM(limits_max_sessions)
        DIFF_STR(agent_user) DIFF_NUM(agent_uid_min) DIFF_NUM(agent_uid_max)
#undef DIFF_STR
#undef DIFF_NUM
        return n;
}

static void set_str(char **field, const char *value)
{
        free(*field);
        *field = value ? strdup(value) : NULL;
}

/* ---- defaults ---- */

TEST(defaults)
{
        acs_config c;

        acs_config_defaults(&c);
        CHECK_STR(c.imap_url, "imaps://localhost:993");
        CHECK(c.imap_ca == NULL);
        CHECK_INT(c.imap_insecure_plaintext, false);
        CHECK_INT(c.cache_mode, ACS_CACHE_MEMORY);
        CHECK_STR(c.cache_dir, "/var/lib/acs");
        CHECK_STR(c.cache_memory_dir, "/run/acs-cache");
        CHECK_STR(c.tree_root, "/run/acs");
        CHECK_INT(c.tree_layout, ACS_LAYOUT_FS);
        CHECK_STR(c.tree_owner, "acs");
        CHECK_STR(c.tree_group, "www-data");
        CHECK_INT(c.tree_mode, 0750);
        CHECK_INT(c.session_idle_timeout, 600);
        CHECK_INT(c.session_expiry, 3600);
        CHECK_INT(c.session_max_per_user, 256);
        CHECK(c.session_admin_group == NULL);
        CHECK_INT(c.socket_mode, 0666);
        CHECK_INT(c.socket_max_connections, 4096);
        CHECK(c.bus_dir == NULL);
        CHECK_INT(c.limits_login_delay_max, 60);
        CHECK_INT(c.limits_max_sessions, 10000);
        CHECK_INT(c.agent_uid_min, 0);
        CHECK_INT(c.agent_uid_max, 0);
        CHECK_STR(c.socket_path, "/run/acsd/acsd.sock");
        CHECK_INT(c.socket_max_per_uid, 32);
        CHECK(c.socket_allow_group == NULL);
        CHECK_INT(c.bus_mode, ACS_BUS_OWN);
        CHECK(c.bus_address == NULL);
        CHECK_INT(c.bus_max_connections, 10000);
        CHECK_INT(c.limits_max_users, 1000);
        CHECK_INT(c.limits_login_failures, 5);
        CHECK_STR(c.agent_user, "acs");
        acs_config_clear(&c);
        CHECK(c.imap_url == NULL && c.tree_owner == NULL && c.agent_user == NULL);
        acs_config_clear(&c); /* twice is fine */
        acs_config_clear(NULL);
}

TEST(empty_input_gives_defaults)
{
        static const char *const texts[] = { "", "\n\n", "; only a comment\n# another\n",
                                             "[imap]\n[cache]\n", "\xEF\xBB\xBF" };
        acs_config want;

        acs_config_defaults(&want);
        for (size_t i = 0; i < ACS_ARRAY_SIZE(texts); i++) {
                acs_config got;
                char *err = NULL;
                int r = acs_config_load_string(texts[i], "t.conf", &got, &err);
                CHECK_INT(r, 0);
                CHECK(err == NULL);
                if (r == 0) {
                        CHECK_INT(config_diff(texts[i], &got, &want), 0);
                        acs_config_clear(&got);
                }
                free(err);
        }
        acs_config_clear(&want);
}

/* ---- good configs: text, and how the expected config differs from the defaults ---- */

static void want_url(acs_config *c) { set_str(&c->imap_url, "imap://mail.example.org:143"); }
static void want_full(acs_config *c)
{
        set_str(&c->imap_url, "imaps://[::1]:10993/");
        set_str(&c->imap_ca, "/etc/acs/ca.pem");
        c->cache_mode = ACS_CACHE_PERSISTENT;
        set_str(&c->cache_dir, "/srv/acs/cache");
        set_str(&c->cache_memory_dir, "/dev/shm/acs");
        set_str(&c->tree_root, "/srv/acs/tree");
        c->tree_layout = ACS_LAYOUT_MAILDIRPP;
        set_str(&c->tree_owner, "mail");
        set_str(&c->tree_group, "dovecot");
        c->tree_mode = 0700;
        c->session_idle_timeout = 1;
        c->session_expiry = 2592000;
        c->session_max_per_user = 1;
        set_str(&c->session_admin_group, "adm");
        set_str(&c->socket_path, "/run/x.sock");
        c->socket_max_per_uid = 65536;
        set_str(&c->socket_allow_group, "www-data");
        c->socket_mode = 0660;
        c->socket_max_connections = 1000000;
        c->bus_mode = ACS_BUS_ADDRESS;
        set_str(&c->bus_address, "unix:path=/run/acs/bus");
        c->bus_max_connections = 1;
        c->limits_max_users = 1000000;
        c->limits_login_failures = 1000;
        c->limits_login_delay_max = 3600;
        c->limits_max_sessions = 10000000;
        set_str(&c->agent_user, "_acs-agent");
        c->agent_uid_min = 100000;
        c->agent_uid_max = 1099999;
}
static void want_own_bus(acs_config *c)
{
        set_str(&c->bus_dir, "/run/acsd/mybus");
        c->agent_uid_min = 4294967294u - 999;
        c->agent_uid_max = 4294967294u;
}
static void want_insecure(acs_config *c)
{
        set_str(&c->imap_url, "imap://127.0.0.1:1143");
        c->imap_insecure_plaintext = true;
}
static void want_mode0(acs_config *c) { c->tree_mode = 0; }
static void want_mode640(acs_config *c) { c->tree_mode = 0640; }
static void want_mode777(acs_config *c) { c->tree_mode = 0777; }
static void want_persistent(acs_config *c) { c->cache_mode = ACS_CACHE_PERSISTENT; }
static void want_timeout(acs_config *c) { c->session_idle_timeout = 604800; }
static void want_owner(acs_config *c) { set_str(&c->tree_owner, "mail"); }
static void want_ca_cleared(acs_config *c) { (void)c; }
static void want_host_only(acs_config *c) { set_str(&c->imap_url, "imaps://mail-1.example.org"); }
static void want_group_sep(acs_config *c)
{
        set_str(&c->tree_group, "a");
        set_str(&c->tree_owner, "b");
}
static void want_value_semicolon(acs_config *c)
{
        c->bus_mode = ACS_BUS_ADDRESS;
        set_str(&c->bus_address, "unix:path=/a;unix:path=/b");
}
static void want_layout_case(acs_config *c) { c->tree_layout = ACS_LAYOUT_MAILDIRPP; }

struct good_case {
        const char *name;
        const char *text;
        void (*want)(acs_config *c);
};

static const struct good_case good_cases[] = {
        { "one key", "[imap]\nurl = imap://mail.example.org:143\n", want_url },
        { "no spaces, no final newline", "[imap]\nurl=imap://mail.example.org:143", want_url },
        { "CRLF line ends", "[imap]\r\nurl = imap://mail.example.org:143\r\n", want_url },
        { "BOM", "\xEF\xBB\xBF[imap]\nurl = imap://mail.example.org:143\n", want_url },
        { "indented key", "[imap]\n   url = imap://mail.example.org:143\n", want_url },
        { "indented key after key", "[tree]\nowner = mail\n  group = www-data\n", want_owner },
        { "section with blanks", "[ imap ]\nurl = imap://mail.example.org:143\n", want_url },
        { "section with comment", "[imap] ; the server\nurl = imap://mail.example.org:143\n",
          want_url },
        { "comments", "; top\n# hash\n[imap]\n  ; indented\n\t# tab\n"
                      "url = imap://mail.example.org:143 ; inline\n", want_url },
        { "colon separator", "[imap]\nurl: imap://mail.example.org:143\n", want_url },
        { "section repeated", "[tree]\nowner = b\n[imap]\n[tree]\ngroup = a\n", want_group_sep },
        { "every key",
          "[imap]\nurl = imaps://[::1]:10993/\nca = /etc/acs/ca.pem\ninsecure_plaintext = no\n"
          "[cache]\nmode = persistent\ndir = /srv/acs/cache\nmemory_dir = /dev/shm/acs\n"
          "[tree]\nroot = /srv/acs/tree\nlayout = maildir++\nowner = mail\ngroup = dovecot\n"
          "mode = 0700\n"
          "[session]\nidle_timeout = 1\nexpiry = 2592000\nmax_per_user = 1\nadmin_group = adm\n"
          "[socket]\npath = /run/x.sock\nmax_per_uid = 65536\nallow_group = www-data\n"
          "mode = 660\nmax_connections = 1000000\n"
          "[bus]\nmode = address\naddress = unix:path=/run/acs/bus\nmax_connections = 1\n"
          "[limits]\nmax_users = 1000000\nlogin_failures = 1000\nlogin_delay_max = 3600\n"
          "max_sessions = 10000000\n"
          "[agent]\nuser = _acs-agent\nuid_min = 100000\nuid_max = 1099999\n",
          want_full },
        { "own bus dir, top uid range",
          "[bus]\ndir = /run/acsd/mybus\n[agent]\nuid_min = 4294966295\nuid_max = 4294967294\n",
          want_own_bus },
        { "insecure with imap://",
          "[imap]\ninsecure_plaintext = yes\nurl = imap://127.0.0.1:1143\n", want_insecure },
        { "bool true", "[imap]\nurl = imap://127.0.0.1:1143\ninsecure_plaintext = true\n",
          want_insecure },
        { "bool on", "[imap]\nurl = imap://127.0.0.1:1143\ninsecure_plaintext = on\n",
          want_insecure },
        { "bool 1", "[imap]\nurl = imap://127.0.0.1:1143\ninsecure_plaintext = 1\n",
          want_insecure },
        { "bool YES", "[imap]\nurl = imap://127.0.0.1:1143\ninsecure_plaintext = YES\n",
          want_insecure },
        { "bool false", "[imap]\ninsecure_plaintext = false\n", want_ca_cleared },
        { "bool off", "[imap]\ninsecure_plaintext = off\n", want_ca_cleared },
        { "bool 0", "[imap]\ninsecure_plaintext = 0\n", want_ca_cleared },
        { "mode 0", "[tree]\nmode = 0\n", want_mode0 },
        { "mode 640", "[tree]\nmode = 640\n", want_mode640 },
        { "mode 0777", "[tree]\nmode = 0777\n", want_mode777 },
        { "enum persistent", "[cache]\nmode = persistent\n", want_persistent },
        { "enum case", "[tree]\nlayout = Maildir++\n", want_layout_case },
        { "unsigned max", "[session]\nidle_timeout = 604800\n", want_timeout },
        { "optional empty", "[imap]\nca =\n", want_ca_cleared },
        { "url host only", "[imap]\nurl = imaps://mail-1.example.org\n", want_host_only },
        { "semicolon inside a value", "[bus]\nmode = address\naddress = unix:path=/a;unix:path=/b\n",
          want_value_semicolon },
};

TEST(good_configs)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(good_cases); i++) {
                const struct good_case *g = &good_cases[i];
                acs_config got, want;
                char *err = NULL;
                int r;

                memset(&got, 0x5a, sizeof(got));
                r = acs_config_load_string(g->text, "good.conf", &got, &err);
                if (r != 0) {
                        printf("#   good case \"%s\": r = %d, error \"%s\"\n", g->name, r,
                               err ? err : "(null)");
                        test_failed_checks++;
                        free(err);
                        continue;
                }
                CHECK(err == NULL);
                acs_config_defaults(&want);
                g->want(&want);
                if (config_diff(g->name, &got, &want) != 0)
                        test_failed_checks++;
                acs_config_clear(&got);
                acs_config_clear(&want);
        }
}

/* ---- bad configs: text, line in the message, a substring of the reason ---- */

struct bad_case {
        const char *text;
        unsigned line; /* 0 = no line in the message */
        const char *reason;
};

static const struct bad_case bad_cases[] = {
        /* structure */
        { "[imap]\nurl = imaps://x\n[nosuch]\n", 3, "unknown section [nosuch] (known: [imap]" },
        { "[imapp]\nurl = imaps://x\n", 1, "unknown section [imapp] (did you mean [imap]?)" },
        { "[imap]\n\n[Cache]\nmode = memory\n", 3, "unknown section [Cache] (did you mean [cache]?)" },
        { "[imap]\nuri = imaps://x\n", 2, "unknown key 'uri' in [imap] (did you mean 'url'?)" },
        { "[imap]\nURL = imaps://x\n", 2, "unknown key 'URL' in [imap] (did you mean 'url'?)" },
        { "[cache]\nurl = imaps://x\n", 2, "unknown key 'url' in [cache] (it belongs in [imap])" },
        { "[cache]\nfrobnicate = 1\n", 2, "unknown key 'frobnicate' in [cache]" },
        { "url = imaps://x\n[imap]\n", 1, "key 'url' outside a section (put it under [imap])" },
        { "; c\nwhatever = 1\n", 2, "key 'whatever' outside a section (start with a [section]" },
        { "[imap]\nurl = imaps://a\nca = /x\nurl = imaps://b\n", 4,
          "duplicate key imap.url (first set on line 2)" },
        { "[tree]\nmode = 0750\n[imap]\n[tree]\nmode = 0700\n", 5,
          "duplicate key tree.mode (first set on line 2)" },
        { "[imap]\nurl\n", 2, "syntax error: expected 'key = value'" },
        { "[imap\nurl = imaps://x\n", 1, "syntax error: '[' without a closing ']'" },
        { "[imap] url = imaps://x\n", 1, "syntax error: text after ']'" },
        { "[imap]\n= imaps://x\n", 2, "syntax error: missing key name" },
        { "[imap]\nurl = imaps://a\n  more\n", 3, "syntax error: expected 'key = value'" },
        { "[imap]\nurl = imaps://a\n  more\n", 3, "an indented line does not continue" },
        { "[imap]\nurl = imaps://a\n  imaps://b\n", 3, "unknown key 'imaps' in [imap] (an indented line" },
        { "[imap]\nbad line\nurl = nonsense\n", 2, "syntax error" },
        { "[imap]\nurl = nonsense\nbad line\n", 2, "imap.url: bad value 'nonsense'" },
        /* strings, paths, names */
        { "[imap]\nurl = http://mail\n", 2, "imap.url: bad value 'http://mail': expected imaps://HOST" },
        { "[imap]\nurl = imaps://\n", 2, "expected a host name" },
        { "[imap]\nurl = imaps://:993\n", 2, "expected a host name" },
        { "[imap]\nurl = imaps://host:0\n", 2, "expected a port from 1 to 65535" },
        { "[imap]\nurl = imaps://host:65536\n", 2, "expected a port from 1 to 65535" },
        { "[imap]\nurl = imaps://host:\n", 2, "expected a port" },
        { "[imap]\nurl = imaps://host/INBOX\n", 2, "no path" },
        { "[imap]\nurl = imaps://me@host\n", 2, "without a user name" },
        { "[imap]\nurl = imaps://[zz]:1\n", 2, "imap.url: bad value" },
        { "[imap]\nurl =\n", 2, "imap.url: empty value; expected imaps://HOST[:PORT]" },
        { "[imap]\nurl = \"imaps://host\"\n", 2, "remove the quotes" },
        { "[imap]\nca = etc/ca.pem\n", 2, "imap.ca: bad value 'etc/ca.pem': expected an absolute path" },
        { "[cache]\ndir =\n", 2, "cache.dir: empty value; expected an absolute path" },
        { "[tree]\nroot = ~/acs\n", 2, "tree.root: bad value '~/acs': expected an absolute path" },
        { "[tree]\nowner = a b\n", 2, "tree.owner: bad value 'a b': expected a user or group name" },
        { "[tree]\ngroup = -x\n", 2, "tree.group: bad value '-x'" },
        { "[tree]\ngroup = 123456789012345678901234567890123\n", 2, "at most 32 characters" },
        { "[agent]\nuser = a/b\n", 2, "agent.user: bad value 'a/b'" },
        { "[agent]\nuser =\n", 2, "agent.user: empty value; expected a user or group name" },
        { "[socket]\nallow_group = www data\n", 2, "socket.allow_group: bad value" },
        { "[bus]\nmode = address\naddress = /run/bus\n", 3, "expected a D-Bus address" },
        /* bools, numbers, modes, enums */
        { "[imap]\ninsecure_plaintext = maybe\n", 2,
          "imap.insecure_plaintext: bad value 'maybe': expected yes, no, true, false, on, off, 1 or 0" },
        { "[imap]\ninsecure_plaintext = yes # comment\n", 2, "not '#'" },
        { "[session]\nidle_timeout = 0\n", 2,
          "session.idle_timeout: bad value '0': expected a whole number from 1 to 604800" },
        { "[session]\nidle_timeout = 604801\n", 2, "from 1 to 604800" },
        { "[session]\nidle_timeout = -1\n", 2, "bad value '-1'" },
        { "[session]\nidle_timeout = +5\n", 2, "bad value '+5'" },
        { "[session]\nidle_timeout = 10s\n", 2, "bad value '10s'" },
        { "[session]\nidle_timeout = 1 0\n", 2, "bad value '1 0'" },
        { "[session]\nidle_timeout = 99999999999999999999999\n", 2, "whole number" },
        { "[socket]\nmax_per_uid = 0\n", 2, "socket.max_per_uid: bad value '0'" },
        { "[bus]\nmax_connections = 1000001\n", 2, "from 1 to 1000000" },
        { "[limits]\nmax_users = \n", 2, "limits.max_users: bad value ''" },
        { "[limits]\nlogin_failures = 0x10\n", 2, "limits.login_failures: bad value '0x10'" },
        { "[tree]\nmode = 0800\n", 2, "tree.mode: bad value '0800': expected an octal mode from 0000 to 0777" },
        { "[tree]\nmode = 1777\n", 2, "expected an octal mode" },
        { "[tree]\nmode = 07500\n", 2, "expected an octal mode" },
        { "[tree]\nmode = rwx\n", 2, "expected an octal mode" },
        { "[tree]\nmode =\n", 2, "tree.mode: bad value ''" },
        { "[cache]\nmode = disk\n", 2, "cache.mode: bad value 'disk': expected memory or persistent" },
        { "[tree]\nlayout = mbox\n", 2, "tree.layout: bad value 'mbox': expected fs or maildir++" },
        { "[bus]\nmode = system\n", 2, "bus.mode: bad value 'system': expected own or address" },
        /* cross-field checks, on the line of the key named */
        { "[bus]\n\nmode = address\n", 3, "bus.mode = address needs bus.address" },
        { "[bus]\naddress = unix:path=/run/bus\n", 2, "bus.address is set but bus.mode is own" },
        { "[imap]\ninsecure_plaintext = yes\n", 2,
          "imap.insecure_plaintext = yes needs an imap:// url" },
        { "[imap]\nurl = imaps://h\ninsecure_plaintext = yes\n", 3, "needs an imap:// url" },
        { "[imap]\nurl = imap://h\nca = /ca.pem\ninsecure_plaintext = yes\n", 3,
          "imap.ca is set but imap.insecure_plaintext = yes" },
        { "[bus]\nmode = address\naddress = unix:path=/x\ndir = /run/b\n", 4,
          "bus.dir is set but bus.mode is address" },
        { "[agent]\nuid_min = 5000\n", 2, "agent.uid_min is set but agent.uid_max is not" },
        { "[agent]\nuid_max = 5000\n", 2, "agent.uid_max is set but agent.uid_min is not" },
        { "[agent]\nuid_min = 5000\nuid_max = 4000\n", 3, "agent.uid_max (4000) is below" },
        { "[limits]\nmax_users = 10\n[agent]\nuid_min = 5000\nuid_max = 5008\n", 5,
          "holds 9 uids, fewer than limits.max_users (10)" },
        { "[agent]\nuid_min = 4294967295\n", 2, "agent.uid_min: bad value '4294967295'" },
        { "[session]\nexpiry = 0\n", 2, "session.expiry: bad value '0'" },
        { "[session]\nadmin_group = a b\n", 2, "session.admin_group: bad value" },
        { "[socket]\nmode = 1666\n", 2, "socket.mode: bad value '1666'" },
        { "[socket]\nmax_connections = 0\n", 2, "socket.max_connections: bad value" },
        { "[bus]\ndir = run/b\n", 2, "bus.dir: bad value 'run/b': expected an absolute path" },
        { "[limits]\nlogin_delay_max = 3601\n", 2, "limits.login_delay_max: bad value" },
        { "[limits]\nmax_sessions = 0\n", 2, "limits.max_sessions: bad value" },
        /* the first error wins */
        { "[imap]\nurl = x\nurl = y\n[nosuch]\n", 2, "imap.url: bad value 'x'" },
        { "[nosuch]\n[imap]\nurl = x\n", 1, "unknown section [nosuch]" },
};

TEST(bad_configs)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad_cases); i++) {
                const struct bad_case *b = &bad_cases[i];
                acs_config got;
                char *err = NULL, prefix[64];
                int r;

                memset(&got, 0x5a, sizeof(got));
                r = acs_config_load_string(b->text, "bad.conf", &got, &err);
                if (b->line)
                        snprintf(prefix, sizeof(prefix), "bad.conf:%u: ", b->line);
                else
                        snprintf(prefix, sizeof(prefix), "bad.conf: ");
                if (r != -EINVAL || !err || strncmp(err, prefix, strlen(prefix)) != 0 ||
                    !strstr(err, b->reason)) {
                        printf("#   bad case %zu (%s): r = %d, error \"%s\"\n#     expected "
                               "\"%s...%s\"\n", i, b->text, r, err ? err : "(null)", prefix,
                               b->reason);
                        test_failed_checks++;
                }
                /* *ret is written only on success */
                CHECK(((unsigned char *)&got)[0] == 0x5a);
                free(err);
        }
}

TEST(error_pointer_optional)
{
        acs_config c;

        CHECK_INT(acs_config_load_string("[nosuch]\n", "x", &c, NULL), -EINVAL);
        CHECK_INT(acs_config_load_string("[imap]\nurl = imaps://h\n", NULL, &c, NULL), 0);
        CHECK_STR(c.imap_url, "imaps://h");
        acs_config_clear(&c);
}

TEST(long_line)
{
        char text[512], *err = NULL;
        acs_config c;
        int r;

        /* 197 characters fit inih's 200-byte line buffer; 198 do not. */
        snprintf(text, sizeof(text), "[tree]\nroot = /%0*d\n", 197 - 8, 0);
        r = acs_config_load_string(text, "l.conf", &c, &err);
        CHECK_INT(r, 0);
        if (r == 0) {
                CHECK_INT(strlen(c.tree_root), 197 - 7);
                acs_config_clear(&c);
        }
        free(err);
        err = NULL;
        snprintf(text, sizeof(text), "[tree]\nroot = /%0*d\n", 198 - 8, 0);
        r = acs_config_load_string(text, "l.conf", &c, &err);
        CHECK_INT(r, -EINVAL);
        CHECK(err && strstr(err, "l.conf:2: line too long (at most 197 characters)"));
        if (err)
                printf("# %s\n", err);
        free(err);
}

/* ---- files ---- */

static char tmpdir[] = "/tmp/acs-test-config-XXXXXX";

static const char *tmp_path(const char *name)
{
        static char path[PATH_MAX];

        if (tmpdir[strlen(tmpdir) - 1] == 'X' && !mkdtemp(tmpdir)) {
                printf("#   mkdtemp: %s\n", strerror(errno));
                fflush(stdout);
                abort();
        }
        snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
        return path;
}

static void write_file(const char *path, const char *data, size_t len)
{
        FILE *f = fopen(path, "w");

        if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
                printf("#   cannot write %s: %s\n", path, strerror(errno));
                fflush(stdout); /* abort() would drop the buffered reason */
                abort();
        }
}

TEST(file_good)
{
        static const char text[] = "[cache]\nmode = persistent\ndir = /srv/c\n";
        const char *path = tmp_path("good.conf");
        acs_config c;
        char *err = NULL;

        write_file(path, text, sizeof(text) - 1);
        CHECK_INT(acs_config_load(path, &c, &err), 0);
        CHECK(err == NULL);
        CHECK_INT(c.cache_mode, ACS_CACHE_PERSISTENT);
        CHECK_STR(c.cache_dir, "/srv/c");
        CHECK_STR(c.tree_root, "/run/acs");
        acs_config_clear(&c);
        unlink(path);
}

TEST(file_bad_names_the_path)
{
        static const char text[] = "[cache]\nmode = persistent\n\ndirr = /srv/c\n";
        const char *path = tmp_path("bad.conf");
        char want[PATH_MAX + 64], *err = NULL;
        acs_config c;

        write_file(path, text, sizeof(text) - 1);
        CHECK_INT(acs_config_load(path, &c, &err), -EINVAL);
        snprintf(want, sizeof(want), "%s:4: unknown key 'dirr' in [cache] (did you mean 'dir'?)",
                 path);
        CHECK_STR(err, want);
        free(err);
        unlink(path);
}

TEST(file_nul_byte)
{
        static const char text[] = "[cache]\nmode = persistent\ndir = /srv\0c\n";
        const char *path = tmp_path("nul.conf");
        char *err = NULL;
        acs_config c;

        write_file(path, text, sizeof(text) - 1);
        CHECK_INT(acs_config_load(path, &c, &err), -EINVAL);
        CHECK(err && strstr(err, "nul.conf:3: NUL byte"));
        free(err);
        unlink(path);
}

TEST(file_missing)
{
        const char *path = tmp_path("does-not-exist.conf");
        char want[PATH_MAX + 64], *err = NULL;
        acs_config c;

        memset(&c, 0x5a, sizeof(c));
        CHECK_INT(acs_config_load(path, &c, &err), -ENOENT);
        snprintf(want, sizeof(want), "%s: No such file or directory", path);
        CHECK_STR(err, want);
        CHECK(((unsigned char *)&c)[0] == 0x5a);
        free(err);
}

TEST(file_directory)
{
        char *err = NULL;
        acs_config c;

        CHECK_INT(acs_config_load(tmp_path(""), &c, &err), -EISDIR);
        CHECK(err && strstr(err, ": Is a directory"));
        free(err);
}

TEST(file_too_large)
{
        const char *path = tmp_path("big.conf");
        size_t len = 1024 * 1024 + 1;
        char *data = malloc(len), *err = NULL;
        acs_config c;

        if (!data)
                abort();
        memset(data, '\n', len);
        write_file(path, data, len);
        CHECK_INT(acs_config_load(path, &c, &err), -EFBIG);
        CHECK(err && strstr(err, "big.conf: file too large"));
        free(err);
        err = NULL;
        /* exactly 1 MiB of blank lines is fine */
        write_file(path, data, len - 1);
        CHECK_INT(acs_config_load(path, &c, &err), 0);
        if (!err)
                acs_config_clear(&c);
        free(err);
        free(data);
        unlink(path);
}

/* ---- the shipped example and documentation ---- */

/* The source tree: this file's path (relative to the build directory unless absolute). */
static int source_root(char *buf, size_t size)
{
        char exe[PATH_MAX], joined[PATH_MAX * 2], real[PATH_MAX];
        const char *env = getenv("ACS_SOURCE_ROOT");
        const char *suffix = "/tests/unit/test-config.c";
        ssize_t n;
        size_t len;

        if (env) {
                snprintf(buf, size, "%s", env);
                return 0;
        }
        if (__FILE__[0] == '/') {
                snprintf(joined, sizeof(joined), "%s", __FILE__);
        } else {
                /* The build directory is three levels above build/tests/unit/test-config. */
                n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
                if (n < 0)
                        return -errno;
                exe[n] = '\0';
                for (int i = 0; i < 3; i++) {
                        char *slash = strrchr(exe, '/');
                        if (!slash)
                                return -ENOENT;
                        *slash = '\0';
                }
                snprintf(joined, sizeof(joined), "%s/%s", exe, __FILE__);
        }
        if (!realpath(joined, real))
                return -errno;
        len = strlen(real);
        if (len < strlen(suffix) || strcmp(real + len - strlen(suffix), suffix) != 0)
                return -ENOENT;
        real[len - strlen(suffix)] = '\0';
        snprintf(buf, size, "%s", real);
        return 0;
}

TEST(example_config_is_the_defaults)
{
        char root[PATH_MAX], path[PATH_MAX + 32], *err = NULL;
        acs_config got, want;
        int r;

        if (source_root(root, sizeof(root)) < 0) {
                printf("#   cannot find the source tree (set ACS_SOURCE_ROOT)\n");
                test_failed_checks++;
                return;
        }
        snprintf(path, sizeof(path), "%s/examples/acs.conf", root);
        r = acs_config_load(path, &got, &err);
        CHECK_INT(r, 0);
        if (err)
                printf("#   %s\n", err);
        free(err);
        if (r < 0)
                return;
        acs_config_defaults(&want);
        CHECK_INT(config_diff("examples/acs.conf", &got, &want), 0);
        acs_config_clear(&got);
        acs_config_clear(&want);
}

static char *read_all(const char *path)
{
        FILE *f = fopen(path, "r");
        char *buf = NULL;
        size_t size = 0;

        if (!f)
                return NULL;
        if (getdelim(&buf, &size, '\0', f) < 0) {
                free(buf);
                buf = NULL;
        }
        fclose(f);
        return buf;
}

TEST(every_key_documented_and_in_example)
{
        static const char *const all[] = {
                "imap.url", "imap.ca", "imap.insecure_plaintext", "cache.mode", "cache.dir",
                "cache.memory_dir", "tree.root", "tree.layout", "tree.owner", "tree.group",
                "tree.mode", "session.idle_timeout", "session.expiry", "session.max_per_user",
                "session.admin_group", "socket.path", "socket.max_per_uid",
                "socket.allow_group", "socket.mode", "socket.max_connections", "bus.mode",
                "bus.address", "bus.max_connections", "bus.dir", "limits.max_users",
                "limits.login_failures", "limits.login_delay_max", "limits.max_sessions",
                "agent.user", "agent.uid_min", "agent.uid_max",
        };
        char root[PATH_MAX], path[PATH_MAX + 32];
        _cleanup_free_ char *doc = NULL, *example = NULL;

        if (source_root(root, sizeof(root)) < 0) {
                printf("#   cannot find the source tree (set ACS_SOURCE_ROOT)\n");
                test_failed_checks++;
                return;
        }
        snprintf(path, sizeof(path), "%s/docs/configuration.md", root);
        doc = read_all(path);
        snprintf(path, sizeof(path), "%s/examples/acs.conf", root);
        example = read_all(path);
        CHECK(doc != NULL);
        CHECK(example != NULL);
        if (!doc || !example)
                return;
        for (size_t i = 0; i < ACS_ARRAY_SIZE(all); i++) {
                char needle[64], section[32];
                const char *dot = strchr(all[i], '.');
                acs_config c;
                char *err = NULL, text[128];

                /* The key exists in the loader (an unknown key would fail). */
                snprintf(section, sizeof(section), "%.*s", (int)(dot - all[i]), all[i]);
                snprintf(text, sizeof(text), "[%s]\n%s = \xff\n", section, dot + 1);
                CHECK(acs_config_load_string(text, "k", &c, &err) == -EINVAL && err &&
                      !strstr(err, "unknown key"));
                free(err);

                snprintf(needle, sizeof(needle), "`%s`", all[i]);
                if (!strstr(doc, needle)) {
                        printf("#   docs/configuration.md does not describe %s\n", needle);
                        test_failed_checks++;
                }
                snprintf(needle, sizeof(needle), "\n%s =", dot + 1);
                if (!strstr(example, needle)) {
                        printf("#   examples/acs.conf has no line \"%s =\"\n", dot + 1);
                        test_failed_checks++;
                }
        }
}

TEST(line_of)
{
        char path[PATH_MAX];
        FILE *f;

        snprintf(path, sizeof(path), "%s", tmp_path("line.conf"));
        f = fopen(path, "w");
        CHECK(f != NULL);
        if (!f)
                return;
        fputs("\xEF\xBB\xBF; comment\n[tree]\nowner = mail\n  group: www-data\n"
              "[ agent ]\nuser=acs\n[tree]\nmode = 0750\n[session]\ngroup_x = 1\n", f);
        fclose(f);
        CHECK_INT(acs_config_line_of(path, "tree", "owner"), 3);
        CHECK_INT(acs_config_line_of(path, "tree", "group"), 4);
        CHECK_INT(acs_config_line_of(path, "agent", "user"), 6);
        CHECK_INT(acs_config_line_of(path, "tree", "mode"), 8);
        CHECK_INT(acs_config_line_of(path, "tree", "root"), 0);       /* default */
        CHECK_INT(acs_config_line_of(path, "session", "group"), 0);   /* a longer key */
        CHECK_INT(acs_config_line_of(path, "agent", "owner"), 0);     /* other section */
        CHECK_INT(acs_config_line_of("/nonexistent/x.conf", "tree", "owner"), 0);
        CHECK_INT(unlink(path), 0);
}

/* Runs last (constructors run in order): removes the temporary directory. */
TEST(zz_cleanup)
{
        if (tmpdir[strlen(tmpdir) - 1] != 'X')
                CHECK_INT(rmdir(tmpdir), 0);
}

TEST_MAIN()
