/* SPDX-License-Identifier: MIT */
/* The acs configuration file (/etc/acs/acs.conf, ini style): typed settings with defaults. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define ACS_CONFIG_DEFAULT_PATH "/etc/acs/acs.conf"

enum acs_cache_mode {
        ACS_CACHE_MEMORY = 0,     /* database on tmpfs, removed when the user's instance stops */
        ACS_CACHE_PERSISTENT = 1, /* database under cache.dir, survives restarts */
};

enum acs_bus_mode {
        ACS_BUS_OWN = 0,     /* acsd starts its own dbus-daemon */
        ACS_BUS_ADDRESS = 1, /* use bus.address */
};

typedef struct acs_config {
        /* [imap] */
        char *imap_url;            /* imaps://host:port or imap://host:port (STARTTLS) */
        char *imap_ca;             /* CA file; NULL = system trust store */
        bool imap_insecure_plaintext;
        /* [cache] */
        enum acs_cache_mode cache_mode;
        char *cache_dir;           /* persistent databases; default /var/lib/acs */
        char *cache_memory_dir;    /* memory databases; default /run/acs-cache */
        /* [tree] */
        char *tree_root;           /* mount root; default /run/acs */
        int tree_layout;           /* enum acs_layout; "fs" or "maildir++" */
        char *tree_owner;          /* user owning the files; default "acs" */
        char *tree_group;          /* group that may read; default "www-data" */
        unsigned tree_mode;        /* octal; default 0750 */
        /* [session] */
        unsigned session_idle_timeout; /* seconds with no session before an instance stops; 600 */
        unsigned session_expiry;   /* seconds a session lives after its last use (no connection holds it); 3600 */
        unsigned session_max_per_user; /* open sessions of one user; 256 */
        char *session_admin_group; /* group whose members may run WHO and see every user; NULL = root only */
        /* [socket] */
        char *socket_path;         /* default /run/acsd/acsd.sock */
        unsigned socket_max_per_uid; /* 32 */
        char *socket_allow_group;  /* group allowed to connect; NULL = any */
        unsigned socket_mode;      /* octal permission bits of the socket; 0666 */
        unsigned socket_max_connections; /* client connections at once, all uids; 4096 */
        /* [bus] */
        enum acs_bus_mode bus_mode;
        char *bus_address;
        unsigned bus_max_connections; /* 10000 */
        char *bus_dir;             /* directory of acsd's own bus socket; NULL = DIR(socket.path)/bus */
        /* [limits] */
        unsigned limits_max_users;    /* 1000 */
        unsigned limits_login_failures; /* failures per user/peer before slowing down: 5 */
        unsigned limits_login_delay_max; /* longest delay of a failed login answer, seconds: 60 */
        unsigned limits_max_sessions; /* sessions of all users at once: 10000 */
        /* [agent] */
        char *agent_user;          /* unprivileged uid for acs-syncd/acs-fs; default "acs" */
        unsigned agent_uid_min;    /* with uid_max: a distinct uid per user from this range; 0 = */
        unsigned agent_uid_max;    /*   every agent runs as agent.user */
} acs_config;

/* Fills *cfg with every default (strings malloc'd). */
void acs_config_defaults(acs_config *cfg);
/* Frees the strings and zeroes *cfg; accepts NULL. */
void acs_config_clear(acs_config *cfg);

/*
 * Loads path over the defaults. Unknown sections or keys, bad values, duplicate keys
 * and syntax errors fail with -EINVAL and *ret_error = "PATH:LINE: reason" (malloc'd);
 * a missing or unreadable file fails with -errno and a message naming the path.
 * On success *ret is the filled config (caller clears it).
 */
int acs_config_load(const char *path, acs_config *ret, char **ret_error);
/* The same from a string (for tests); name is used in messages. */
int acs_config_load_string(const char *text, const char *name, acs_config *ret, char **ret_error);

/*
 * The line of path where section.key is set, for messages about a value the loader
 * cannot check alone (a user or group that does not exist on this host): 0 when the key
 * is not in the file (its default applies) or the file cannot be read. Reads the file
 * again; follows the loader's syntax (blanks, comments, repeated sections).
 */
unsigned acs_config_line_of(const char *path, const char *section, const char *key);
