/* SPDX-License-Identifier: MIT */
/* The cache store over SQLite: schema and migrations, triggers, cached statements, bodies. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <sqlite3.h>

#include "acs/store.h"
#include "acs/util.h"

/* PRAGMA application_id of an acs cache: "acs1" in ASCII. */
#define ACS_APPLICATION_ID 0x61637331
#define BUSY_TIMEOUT_MS 5000
/* Chunk size for hashing a streamed body back out of the database. */
#define HASH_CHUNK (256 * 1024)

/*
 * SQL fragments used by the triggers. They use only built-in SQL functions so that any
 * SQLite client (the sqlite3 shell included) keeps the journal and the mtimes right.
 *
 * NOW_NS: the current time in ns with ms precision. BUMP: the mtime rule
 * new = max(old + 1, now), so an mtime strictly increases even within one millisecond.
 */
#define NOW_NS "(CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000000)"
#define BUMP "mtime_ns = max(mtime_ns + 1, " NOW_NS ")"
/* n up to and including its last delimiter d (a character code), '' when there is none. */
#define UPTO_DELIM(n, d) "rtrim(" n ", replace(" n ", char(" d "), ''))"
/* The parent mailbox name of n (name up to its last delimiter), NULL when n has none. */
#define PARENT(n, d)                                                                       \
        "(CASE WHEN " d " > 0 AND instr(" n ", char(" d ")) > 0 THEN substr(" UPTO_DELIM(n, d) \
        ", 1, length(" UPTO_DELIM(n, d) ") - 1) END)"
/* Bumps the parent mailbox of n when such a row exists, else the root. */
#define BUMP_PARENT(n, d)                                                                  \
        "  UPDATE mailbox SET " BUMP " WHERE name = " PARENT(n, d) ";\n"                   \
        "  UPDATE root SET " BUMP " WHERE NOT EXISTS (SELECT 1 FROM mailbox WHERE name = " \
        PARENT(n, d) ");\n"
/* Deletes body b unless a message or an op still refers to it. */
#define GC_BODY(b)                                                                         \
        "  DELETE FROM body WHERE id = " b                                                 \
        " AND NOT EXISTS (SELECT 1 FROM message WHERE body_id = " b ")"                    \
        " AND NOT EXISTS (SELECT 1 FROM op WHERE body_id = " b ");\n"

#define STR_(x) #x
#define STR(x) STR_(x)

/*
 * Schema migrations: migrations[i] upgrades user_version i to i + 1. They run, together
 * with the user_version update, in one transaction. docs/cache.md describes the schema.
 */
static const char *const migrations[] = {
        /* 0 -> 1: the initial schema */
        "PRAGMA application_id = " STR(ACS_APPLICATION_ID) ";\n"
        "CREATE TABLE meta (\n"
        "  key TEXT PRIMARY KEY NOT NULL,\n"
        "  value TEXT NOT NULL\n"
        ") WITHOUT ROWID;\n"
        "CREATE TABLE root (\n"
        "  id INTEGER PRIMARY KEY CHECK (id = 1),\n"
        "  mtime_ns INTEGER NOT NULL\n"
        ");\n"
        "INSERT INTO root (id, mtime_ns) VALUES (1, " NOW_NS ");\n"
        "CREATE TABLE mailbox (\n"
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "  name TEXT NOT NULL UNIQUE,\n"
        "  delim INTEGER NOT NULL DEFAULT 0 CHECK (delim BETWEEN 0 AND 127),\n"
        "  attrs INTEGER NOT NULL DEFAULT 0,\n"
        "  uidvalidity INTEGER NOT NULL DEFAULT 0,\n"
        "  uidnext INTEGER NOT NULL DEFAULT 0,\n"
        "  highestmodseq INTEGER NOT NULL DEFAULT 0,\n"
        "  mtime_ns INTEGER NOT NULL DEFAULT 0\n"
        ");\n"
        "CREATE TABLE body (\n"
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "  sha256 BLOB UNIQUE CHECK (sha256 IS NULL OR length(sha256) = 32),\n"
        "  size INTEGER NOT NULL CHECK (size >= 0)\n"
        ");\n"
        "CREATE TABLE body_data (\n"
        "  body_id INTEGER PRIMARY KEY,\n"
        "  data BLOB NOT NULL\n"
        ");\n"
        "CREATE TABLE message (\n"
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "  mailbox_id INTEGER NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,\n"
        "  uid INTEGER CHECK (uid IS NULL OR uid BETWEEN 1 AND 4294967295),\n"
        "  modseq INTEGER NOT NULL DEFAULT 0,\n"
        "  flags INTEGER NOT NULL DEFAULT 0,\n"
        "  keywords TEXT NOT NULL DEFAULT '',\n"
        "  internaldate INTEGER NOT NULL,\n"
        "  size INTEGER NOT NULL,\n"
        "  vsize INTEGER NOT NULL,\n"
        "  uniq TEXT NOT NULL,\n"
        "  body_id INTEGER REFERENCES body (id),\n"
        "  state INTEGER NOT NULL DEFAULT 0,\n"
        "  UNIQUE (mailbox_id, uid),\n"
        "  UNIQUE (mailbox_id, uniq)\n"
        ");\n"
        "CREATE INDEX message_mailbox ON message (mailbox_id, id);\n"
        "CREATE INDEX message_body ON message (body_id);\n"
        "CREATE TABLE keyword (\n"
        "  idx INTEGER PRIMARY KEY CHECK (idx BETWEEN 0 AND 25),\n"
        "  name TEXT NOT NULL UNIQUE\n"
        ");\n"
        "CREATE TABLE change (\n"
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "  kind INTEGER NOT NULL,\n"
        "  mailbox_id INTEGER NOT NULL,\n"
        "  message_id INTEGER NOT NULL DEFAULT 0,\n"
        "  old_mailbox_id INTEGER NOT NULL DEFAULT 0,\n"
        "  old_flags INTEGER NOT NULL DEFAULT 0,\n"
        "  old_keywords TEXT,\n"
        "  old_state INTEGER NOT NULL DEFAULT 0,\n"
        "  old_uniq TEXT,\n"
        "  old_size INTEGER NOT NULL DEFAULT 0,\n"
        "  old_vsize INTEGER NOT NULL DEFAULT 0,\n"
        "  old_name TEXT\n"
        ");\n"
        "CREATE TABLE op (\n"
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "  kind INTEGER NOT NULL,\n"
        "  mailbox_id INTEGER NOT NULL DEFAULT 0,\n"
        "  message_id INTEGER NOT NULL DEFAULT 0,\n"
        "  uid INTEGER NOT NULL DEFAULT 0,\n"
        "  target_mailbox_id INTEGER NOT NULL DEFAULT 0,\n"
        "  flags_add INTEGER NOT NULL DEFAULT 0,\n"
        "  flags_del INTEGER NOT NULL DEFAULT 0,\n"
        "  keywords_add TEXT,\n"
        "  keywords_del TEXT,\n"
        "  body_id INTEGER REFERENCES body (id),\n"
        "  internaldate INTEGER NOT NULL DEFAULT 0,\n"
        "  name TEXT,\n"
        "  new_name TEXT,\n"
        "  attempts INTEGER NOT NULL DEFAULT 0,\n"
        "  last_error TEXT\n"
        ");\n"
        "CREATE INDEX op_body ON op (body_id);\n"
        /* mailboxes */
        "CREATE TRIGGER mailbox_added AFTER INSERT ON mailbox BEGIN\n"
        "  INSERT INTO change (kind, mailbox_id) VALUES (1, NEW.id);\n"
        "  UPDATE mailbox SET " BUMP " WHERE id = NEW.id;\n"
        BUMP_PARENT("NEW.name", "NEW.delim")
        "END;\n"
        "CREATE TRIGGER mailbox_removed AFTER DELETE ON mailbox BEGIN\n"
        "  INSERT INTO change (kind, mailbox_id, old_name) VALUES (2, OLD.id, OLD.name);\n"
        BUMP_PARENT("OLD.name", "OLD.delim")
        "END;\n"
        "CREATE TRIGGER mailbox_renamed AFTER UPDATE OF name ON mailbox\n"
        "WHEN OLD.name IS NOT NEW.name BEGIN\n"
        "  INSERT INTO change (kind, mailbox_id, old_name) VALUES (3, NEW.id, OLD.name);\n"
        BUMP_PARENT("OLD.name", "OLD.delim")
        BUMP_PARENT("NEW.name", "NEW.delim")
        "END;\n"
        "CREATE TRIGGER mailbox_attrs AFTER UPDATE OF delim, attrs ON mailbox\n"
        "WHEN OLD.delim IS NOT NEW.delim OR OLD.attrs IS NOT NEW.attrs BEGIN\n"
        "  INSERT INTO change (kind, mailbox_id, old_name) VALUES (3, NEW.id, OLD.name);\n"
        "END;\n"
        /* messages */
        "CREATE TRIGGER message_added AFTER INSERT ON message BEGIN\n"
        "  INSERT INTO change (kind, mailbox_id, message_id) VALUES (4, NEW.mailbox_id, NEW.id);\n"
        "  UPDATE mailbox SET " BUMP " WHERE id = NEW.mailbox_id;\n"
        "END;\n"
        "CREATE TRIGGER message_removed AFTER DELETE ON message BEGIN\n"
        "  INSERT INTO change (kind, mailbox_id, message_id, old_mailbox_id, old_flags,\n"
        "      old_keywords, old_state, old_uniq, old_size, old_vsize)\n"
        "    VALUES (5, OLD.mailbox_id, OLD.id, OLD.mailbox_id, OLD.flags, OLD.keywords,\n"
        "      OLD.state, OLD.uniq, OLD.size, OLD.vsize);\n"
        "  UPDATE mailbox SET " BUMP " WHERE id = OLD.mailbox_id;\n"
        GC_BODY("OLD.body_id")
        "END;\n"
        "CREATE TRIGGER message_changed\n"
        "AFTER UPDATE OF flags, keywords, uid, state, mailbox_id, uniq ON message\n"
        "WHEN OLD.flags IS NOT NEW.flags OR OLD.keywords IS NOT NEW.keywords\n"
        "  OR OLD.uid IS NOT NEW.uid OR OLD.state IS NOT NEW.state\n"
        "  OR OLD.mailbox_id IS NOT NEW.mailbox_id OR OLD.uniq IS NOT NEW.uniq BEGIN\n"
        "  INSERT INTO change (kind, mailbox_id, message_id, old_mailbox_id, old_flags,\n"
        "      old_keywords, old_state, old_uniq, old_size, old_vsize)\n"
        "    VALUES (6, NEW.mailbox_id, NEW.id, OLD.mailbox_id, OLD.flags, OLD.keywords,\n"
        "      OLD.state, OLD.uniq, OLD.size, OLD.vsize);\n"
        "  UPDATE mailbox SET " BUMP " WHERE id IN (OLD.mailbox_id, NEW.mailbox_id);\n"
        "END;\n"
        "CREATE TRIGGER message_body_changed AFTER UPDATE OF body_id ON message\n"
        "WHEN OLD.body_id IS NOT NULL AND OLD.body_id IS NOT NEW.body_id BEGIN\n"
        GC_BODY("OLD.body_id")
        "END;\n"
        /* bodies */
        "CREATE TRIGGER body_removed AFTER DELETE ON body BEGIN\n"
        "  DELETE FROM body_data WHERE body_id = OLD.id;\n"
        "END;\n"
        "CREATE TRIGGER op_removed AFTER DELETE ON op WHEN OLD.body_id IS NOT NULL BEGIN\n"
        GC_BODY("OLD.body_id")
        "END;\n"
        "CREATE TRIGGER op_body_changed AFTER UPDATE OF body_id ON op\n"
        "WHEN OLD.body_id IS NOT NULL AND OLD.body_id IS NOT NEW.body_id BEGIN\n"
        GC_BODY("OLD.body_id")
        "END;\n",
};

_Static_assert(ACS_ARRAY_SIZE(migrations) == ACS_STORE_SCHEMA_VERSION,
               "one migration per schema version");

#define MB_COLS "id, name, delim, attrs, uidvalidity, uidnext, highestmodseq, mtime_ns"
#define MSG_COLS "id, mailbox_id, uid, modseq, flags, keywords, internaldate, size, vsize, uniq, body_id, state"
#define OP_COLS                                                                            \
        "seq, kind, mailbox_id, message_id, uid, target_mailbox_id, flags_add, flags_del, " \
        "keywords_add, keywords_del, body_id, internaldate, name, new_name, attempts, last_error"
#define CHANGE_COLS                                                                        \
        "seq, kind, mailbox_id, message_id, old_mailbox_id, old_flags, old_keywords, "     \
        "old_state, old_uniq, old_size, old_vsize, old_name"

/* Statements prepared once per handle and reused. */
enum stmt_id {
        ST_BEGIN,
        ST_COMMIT,
        ST_ROLLBACK,
        ST_SAVEPOINT,
        ST_RELEASE,
        ST_ROLLBACK_TO,
        ST_SYNC_FULL,
        ST_SYNC_NORMAL,
        ST_MB_GET,
        ST_MB_GET_ID,
        ST_MB_PUT,
        ST_MB_SET_STATE,
        ST_MB_RENAME,
        ST_MB_EXISTS,
        ST_MB_DELETE_MSGS,
        ST_MB_DELETE,
        ST_MB_ALL,
        ST_ROOT_MTIME,
        ST_MSG_NEXT_ID,
        ST_MSG_ADD,
        ST_MSG_GET,
        ST_MSG_GET_UID,
        ST_MSG_GET_UNIQ,
        ST_MSG_SET_FLAGS,
        ST_MSG_SET_UID,
        ST_MSG_SET_STATE,
        ST_MSG_SET_BODY,
        ST_MSG_MOVE,
        ST_MSG_DELETE,
        ST_MSG_DELETE_UID,
        ST_MSG_LIST,
        ST_MSG_COUNT,
        ST_MSG_UIDS,
        ST_BODY_FIND,
        ST_BODY_FIND_OTHER,
        ST_BODY_INSERT,
        ST_BODY_DATA_INSERT,
        ST_BODY_SET_SHA,
        ST_BODY_DELETE,
        ST_BODY_SIZE,
        ST_BODY_UNFINISHED,
        ST_KW_GET,
        ST_KW_NEXT,
        ST_KW_INSERT,
        ST_KW_NAME,
        ST_CH_SINCE,
        ST_CH_LAST,
        ST_CH_TRIM,
        ST_OP_ADD,
        ST_OP_NEXT,
        ST_OP_DONE,
        ST_OP_FAILED,
        ST_OP_COUNT,
        ST_OP_RESOLVE_UID,
        ST_META_GET,
        ST_META_SET,
        ST_META_DEL,
        _ST_MAX,
};

static const char *const stmt_sql[_ST_MAX] = {
        [ST_BEGIN] = "BEGIN IMMEDIATE",
        [ST_COMMIT] = "COMMIT",
        [ST_ROLLBACK] = "ROLLBACK",
        [ST_SAVEPOINT] = "SAVEPOINT acs_write",
        [ST_RELEASE] = "RELEASE acs_write",
        [ST_ROLLBACK_TO] = "ROLLBACK TO acs_write",
        [ST_SYNC_FULL] = "PRAGMA synchronous = FULL",
        [ST_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
        [ST_MB_GET] = "SELECT " MB_COLS " FROM mailbox WHERE name = ?1",
        [ST_MB_GET_ID] = "SELECT " MB_COLS " FROM mailbox WHERE id = ?1",
        [ST_MB_PUT] = "INSERT INTO mailbox (name, delim, attrs) VALUES (?1, ?2, ?3)"
                      " ON CONFLICT (name) DO UPDATE SET delim = excluded.delim,"
                      " attrs = excluded.attrs RETURNING id",
        [ST_MB_SET_STATE] = "UPDATE mailbox SET uidvalidity = ?2, uidnext = ?3,"
                            " highestmodseq = ?4 WHERE id = ?1",
        [ST_MB_RENAME] = "UPDATE mailbox SET name = ?2 WHERE id = ?1",
        [ST_MB_EXISTS] = "SELECT 1 FROM mailbox WHERE id = ?1",
        [ST_MB_DELETE_MSGS] = "DELETE FROM message WHERE mailbox_id = ?1",
        [ST_MB_DELETE] = "DELETE FROM mailbox WHERE id = ?1",
        [ST_MB_ALL] = "SELECT " MB_COLS " FROM mailbox ORDER BY name",
        [ST_ROOT_MTIME] = "SELECT mtime_ns FROM root WHERE id = 1",
        [ST_MSG_NEXT_ID] = "SELECT max(coalesce((SELECT seq FROM sqlite_sequence"
                           " WHERE name = 'message'), 0),"
                           " coalesce((SELECT max(id) FROM message), 0)) + 1",
        [ST_MSG_ADD] = "INSERT INTO message (id, mailbox_id, uid, modseq, flags, keywords,"
                       " internaldate, size, vsize, uniq, body_id, state)"
                       " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        [ST_MSG_GET] = "SELECT " MSG_COLS " FROM message WHERE id = ?1",
        [ST_MSG_GET_UID] = "SELECT " MSG_COLS " FROM message WHERE mailbox_id = ?1 AND uid = ?2",
        [ST_MSG_GET_UNIQ] = "SELECT " MSG_COLS " FROM message WHERE mailbox_id = ?1 AND uniq = ?2",
        [ST_MSG_SET_FLAGS] = "UPDATE message SET flags = ?2, keywords = coalesce(?3, keywords),"
                             " modseq = CASE WHEN ?4 = 0 THEN modseq ELSE ?4 END WHERE id = ?1",
        [ST_MSG_SET_UID] = "UPDATE message SET uid = ?2 WHERE id = ?1",
        [ST_MSG_SET_STATE] = "UPDATE message SET state = ?2 WHERE id = ?1",
        [ST_MSG_SET_BODY] = "UPDATE message SET body_id = ?2 WHERE id = ?1",
        [ST_MSG_MOVE] = "UPDATE message SET mailbox_id = ?2, uid = ?3,"
                        " uniq = coalesce(?4, internaldate || '.M' || id || '.acs') WHERE id = ?1",
        [ST_MSG_DELETE] = "DELETE FROM message WHERE id = ?1",
        [ST_MSG_DELETE_UID] = "DELETE FROM message WHERE mailbox_id = ?1 AND uid = ?2",
        [ST_MSG_LIST] = "SELECT " MSG_COLS " FROM message WHERE mailbox_id = ?1 AND id > ?2"
                        " ORDER BY id LIMIT ?3",
        [ST_MSG_COUNT] = "SELECT count(*), coalesce(max(uid), 0) FROM message WHERE mailbox_id = ?1",
        [ST_MSG_UIDS] = "SELECT uid, id FROM message WHERE mailbox_id = ?1 AND uid IS NOT NULL"
                        " ORDER BY uid",
        [ST_BODY_FIND] = "SELECT id FROM body WHERE sha256 = ?1",
        [ST_BODY_FIND_OTHER] = "SELECT id FROM body WHERE sha256 = ?1 AND id <> ?2",
        [ST_BODY_INSERT] = "INSERT INTO body (sha256, size) VALUES (?1, ?2)",
        [ST_BODY_DATA_INSERT] = "INSERT INTO body_data (body_id, data) VALUES (?1, ?2)",
        [ST_BODY_SET_SHA] = "UPDATE body SET sha256 = ?2 WHERE id = ?1",
        [ST_BODY_DELETE] = "DELETE FROM body WHERE id = ?1",
        [ST_BODY_SIZE] = "SELECT size FROM body WHERE id = ?1",
        [ST_BODY_UNFINISHED] = "SELECT sha256 IS NULL FROM body WHERE id = ?1",
        [ST_KW_GET] = "SELECT idx FROM keyword WHERE name = ?1",
        [ST_KW_NEXT] = "SELECT coalesce(max(idx) + 1, 0) FROM keyword",
        [ST_KW_INSERT] = "INSERT INTO keyword (idx, name) VALUES (?1, ?2)",
        [ST_KW_NAME] = "SELECT name FROM keyword WHERE idx = ?1",
        [ST_CH_SINCE] = "SELECT " CHANGE_COLS " FROM change WHERE seq > ?1 ORDER BY seq",
        [ST_CH_LAST] = "SELECT max(coalesce((SELECT seq FROM sqlite_sequence"
                       " WHERE name = 'change'), 0), coalesce((SELECT max(seq) FROM change), 0))",
        [ST_CH_TRIM] = "DELETE FROM change WHERE seq <= ?1",
        [ST_OP_ADD] = "INSERT INTO op (kind, mailbox_id, message_id, uid, target_mailbox_id,"
                      " flags_add, flags_del, keywords_add, keywords_del, body_id, internaldate,"
                      " name, new_name, attempts, last_error)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        [ST_OP_NEXT] = "SELECT " OP_COLS " FROM op WHERE seq > ?1 ORDER BY seq LIMIT 1",
        [ST_OP_DONE] = "DELETE FROM op WHERE seq = ?1",
        [ST_OP_FAILED] = "UPDATE op SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
        [ST_OP_COUNT] = "SELECT count(*) FROM op",
        [ST_OP_RESOLVE_UID] = "UPDATE op SET uid = ?3 WHERE message_id = ?1 AND mailbox_id = ?2"
                              " AND uid = 0",
        [ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
        [ST_META_SET] = "INSERT INTO meta (key, value) VALUES (?1, ?2)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [ST_META_DEL] = "DELETE FROM meta WHERE key = ?1",
};

struct acs_store {
        sqlite3 *db;
        bool readonly;
        bool in_tx;   /* inside acs_store_begin() .. commit/rollback */
        bool durable; /* the open transaction commits with synchronous=FULL */
        sqlite3_stmt *stmts[_ST_MAX];
        /*
         * The body blob handle kept open between consecutive acs_store_body_read/write
         * calls. It holds a read snapshot, so every other call on the handle closes it
         * first (q_get) and a read that reaches the end of the body closes it too.
         */
        sqlite3_blob *blob;
        int64_t blob_id;
        bool blob_rw;
        char errbuf[256];
};

/* ---- errors ---- */

static int errno_from_sqlite(int rc)
{
        switch (rc & 0xff) {
        case SQLITE_OK:
        case SQLITE_ROW:
        case SQLITE_DONE:
                return 0;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return -EBUSY;
        case SQLITE_NOMEM:
                return -ENOMEM;
        case SQLITE_READONLY:
                return -EROFS;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
                return -EBADMSG;
        case SQLITE_FULL:
                return -ENOSPC;
        case SQLITE_TOOBIG:
                return -EFBIG;
        case SQLITE_CANTOPEN:
                return -EACCES;
        case SQLITE_CONSTRAINT:
                switch (rc) {
                case SQLITE_CONSTRAINT_UNIQUE:
                case SQLITE_CONSTRAINT_PRIMARYKEY:
                        return -EEXIST;
                case SQLITE_CONSTRAINT_FOREIGNKEY:
                        return -ENOENT;
                default:
                        return -EINVAL;
                }
        default:
                return -EIO;
        }
}

/* Records the connection's error message and returns the errno for rc. */
static int sql_fail(acs_store *s, int rc)
{
        snprintf(s->errbuf, sizeof(s->errbuf), "%s", sqlite3_errmsg(s->db));
        return errno_from_sqlite(rc);
}

/* Records a message of our own and returns r. */
ACS_PRINTF(3, 4) static int own_fail(acs_store *s, int r, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(s->errbuf, sizeof(s->errbuf), fmt, ap);
        va_end(ap);
        return r;
}

const char *acs_store_errmsg(acs_store *s)
{
        return s ? s->errbuf : "no store handle";
}

/* ---- cached statements ---- */

static void blob_drop(acs_store *s)
{
        if (s->blob) {
                sqlite3_blob_close(s->blob);
                s->blob = NULL;
                s->blob_id = 0;
        }
}

/* A statement in use: the cached one (reset on release) or, when that one is busy
 * further up the stack (a callback re-entering the store), a private copy. */
struct q {
        sqlite3_stmt *st;
        bool owned;
};

static void q_release(struct q *q)
{
        if (!q->st)
                return;
        if (q->owned) {
                sqlite3_finalize(q->st);
        } else {
                sqlite3_reset(q->st);
                sqlite3_clear_bindings(q->st);
        }
        q->st = NULL;
}

#define _cleanup_q_ __attribute__((cleanup(q_release)))

static int q_get(acs_store *s, enum stmt_id id, struct q *ret)
{
        sqlite3_stmt *st = s->stmts[id];
        int rc;

        blob_drop(s);
        if (st && !sqlite3_stmt_busy(st)) {
                *ret = (struct q){ .st = st, .owned = false };
                return 0;
        }
        rc = sqlite3_prepare_v3(s->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
        if (rc != SQLITE_OK)
                return sql_fail(s, rc);
        if (!s->stmts[id]) {
                s->stmts[id] = st;
                *ret = (struct q){ .st = st, .owned = false };
        } else {
                *ret = (struct q){ .st = st, .owned = true };
        }
        return 0;
}

/* Steps a statement expected to produce no rows (or ignores rows). */
static int q_exec(acs_store *s, struct q *q)
{
        int rc;

        while ((rc = sqlite3_step(q->st)) == SQLITE_ROW)
                ;
        if (rc != SQLITE_DONE)
                return sql_fail(s, rc);
        return 0;
}

/* Steps once: 1 with a row, 0 when done, -errno on error. */
static int q_row(acs_store *s, struct q *q)
{
        int rc = sqlite3_step(q->st);

        if (rc == SQLITE_ROW)
                return 1;
        if (rc == SQLITE_DONE)
                return 0;
        return sql_fail(s, rc);
}

static int run(acs_store *s, enum stmt_id id)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, id, &q);

        return r < 0 ? r : q_exec(s, &q);
}

static void bind_text_opt(sqlite3_stmt *st, int i, const char *v)
{
        if (v)
                sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
        else
                sqlite3_bind_null(st, i);
}

/* Binds v, or NULL when v is 0 (uids and body ids use 0 for "none" in the API). */
static void bind_id_opt(sqlite3_stmt *st, int i, int64_t v)
{
        if (v)
                sqlite3_bind_int64(st, i, v);
        else
                sqlite3_bind_null(st, i);
}

static int dup_opt(const unsigned char *v, char **ret)
{
        char *d = NULL;

        if (v) {
                d = strdup((const char *)v);
                if (!d)
                        return -ENOMEM;
        }
        *ret = d;
        return 0;
}

/* ---- transactions ---- */

int acs_store_begin(acs_store *s, bool durable)
{
        int r;

        if (s->in_tx)
                return own_fail(s, -EINVAL, "a transaction is already open on this handle");
        if (s->readonly)
                return own_fail(s, -EROFS, "the store was opened read-only");
        if (durable) {
                r = run(s, ST_SYNC_FULL);
                if (r < 0)
                        return r;
        }
        r = run(s, ST_BEGIN);
        if (r < 0) {
                if (durable)
                        (void)run(s, ST_SYNC_NORMAL);
                return r;
        }
        s->in_tx = true;
        s->durable = durable;
        return 0;
}

/*
 * True when SQLite rolled back the open transaction on its own (after SQLITE_FULL,
 * SQLITE_IOERR, SQLITE_NOMEM...): further writes must not silently autocommit.
 */
static bool tx_lost(acs_store *s)
{
        return s->in_tx && sqlite3_get_autocommit(s->db);
}

static void tx_ended(acs_store *s)
{
        bool durable = s->durable;

        s->in_tx = false;
        s->durable = false;
        if (durable)
                (void)run(s, ST_SYNC_NORMAL);
}

int acs_store_commit(acs_store *s)
{
        int r;

        if (!s->in_tx)
                return own_fail(s, -EINVAL, "no transaction is open on this handle");
        if (tx_lost(s)) {
                tx_ended(s);
                return own_fail(s, -EIO, "the transaction was rolled back by an earlier error");
        }
        r = run(s, ST_COMMIT);
        if (r < 0) {
                /* SQLITE_BUSY on COMMIT leaves the transaction open: the caller may
                 * retry the commit or roll back. */
                if (sqlite3_get_autocommit(s->db))
                        tx_ended(s);
                return r;
        }
        tx_ended(s);
        return 0;
}

void acs_store_rollback(acs_store *s)
{
        if (!s || !s->in_tx)
                return;
        if (!sqlite3_get_autocommit(s->db))
                (void)run(s, ST_ROLLBACK);
        tx_ended(s);
}

/*
 * Every write function runs between w_begin() and w_end(): inside the caller's
 * transaction as a savepoint (so a failing function leaves nothing half done), or,
 * when no transaction is open, in one of its own (non-durable).
 */
static int w_begin(acs_store *s, bool *ret_own_tx)
{
        int r;

        if (s->readonly)
                return own_fail(s, -EROFS, "the store was opened read-only");
        if (!s->in_tx) {
                r = acs_store_begin(s, false);
                if (r < 0)
                        return r;
                *ret_own_tx = true;
                return 0;
        }
        if (tx_lost(s))
                return own_fail(s, -EIO, "the transaction was rolled back by an earlier error");
        r = run(s, ST_SAVEPOINT);
        if (r < 0)
                return r;
        *ret_own_tx = false;
        return 0;
}

static int w_end(acs_store *s, bool own_tx, int r)
{
        char keep[sizeof(s->errbuf)];
        int k;

        if (own_tx) {
                if (r < 0) {
                        memcpy(keep, s->errbuf, sizeof(keep));
                        acs_store_rollback(s);
                        memcpy(s->errbuf, keep, sizeof(keep));
                        return r;
                }
                k = acs_store_commit(s);
                if (k < 0) {
                        acs_store_rollback(s);
                        return k;
                }
                return r;
        }
        if (r < 0) {
                memcpy(keep, s->errbuf, sizeof(keep));
                (void)run(s, ST_ROLLBACK_TO);
                (void)run(s, ST_RELEASE);
                memcpy(s->errbuf, keep, sizeof(keep));
                return r;
        }
        k = run(s, ST_RELEASE);
        return k < 0 ? k : r;
}

/* ---- open / close ---- */

ACS_PRINTF(2, 3) static void set_error(char **ret_error, const char *fmt, ...)
{
        va_list ap;
        char *msg;

        if (!ret_error)
                return;
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        *ret_error = msg;
}

static uint32_t be32(const unsigned char *p)
{
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/*
 * Refuses what is not a database before SQLite sees it: an empty file (SQLite would
 * silently treat it as a new database), a directory, a device. Uses stat() only: the
 * file itself must not be opened and closed here, since close() drops every POSIX lock
 * this process holds on it, including those of other open store handles.
 */
static int precheck_file(const char *path, const struct stat *st, char **ret_error)
{
        if (S_ISDIR(st->st_mode)) {
                set_error(ret_error, "%s: is a directory, not an acs cache database", path);
                return -EISDIR;
        }
        if (!S_ISREG(st->st_mode)) {
                set_error(ret_error, "%s: not a regular file, not an acs cache database", path);
                return -EBADMSG;
        }
        if (st->st_size == 0) {
                set_error(ret_error, "%s: not an acs cache database (empty file)", path);
                return -EBADMSG;
        }
        return 0;
}

/*
 * Checks the 100-byte header through SQLite's own file handle (opened, not yet read):
 * the magic, the page size, and that the file is as long as the header says (SQLite
 * would read the pages past the end of a truncated file as zeros). Never writes.
 */
static int header_check(acs_store *s, const char *path, char **ret_error)
{
        sqlite3_file *f = NULL;
        sqlite3_int64 size = 0;
        unsigned char hdr[100];
        uint64_t page_size, pages;
        struct stat wal;
        char walpath[PATH_MAX];
        int rc;

        rc = sqlite3_file_control(s->db, "main", SQLITE_FCNTL_FILE_POINTER, &f);
        if (rc != SQLITE_OK || !f || !f->pMethods) {
                set_error(ret_error, "%s: cannot read the database header", path);
                return -EIO;
        }
        rc = f->pMethods->xFileSize(f, &size);
        if (rc != SQLITE_OK) {
                set_error(ret_error, "%s: cannot read the database header", path);
                return errno_from_sqlite(rc);
        }
        if (size == 0) {
                set_error(ret_error, "%s: not an acs cache database (empty file)", path);
                return -EBADMSG;
        }
        if (size < (sqlite3_int64)sizeof(hdr) ||
            f->pMethods->xRead(f, hdr, sizeof(hdr), 0) != SQLITE_OK ||
            memcmp(hdr, "SQLite format 3", 16) != 0) {
                set_error(ret_error, "%s: not an acs cache database (not an SQLite 3 file)", path);
                return -EBADMSG;
        }
        page_size = (uint64_t)hdr[16] << 8 | hdr[17];
        if (page_size == 1)
                page_size = 65536;
        if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1))) {
                set_error(ret_error, "%s: not an acs cache database (bad page size in header)",
                          path);
                return -EBADMSG;
        }
        /* The page count in the header is valid when "version-valid-for" matches the
         * change counter. While a -wal file holds frames the main file may legitimately
         * lag behind (a checkpoint interrupted by a crash): SQLite recovers that. */
        pages = be32(hdr + 28);
        if (pages > 0 && be32(hdr + 92) == be32(hdr + 24)) {
                bool wal_frames = snprintf(walpath, sizeof(walpath), "%s-wal", path) <
                                          (int)sizeof(walpath) &&
                                  stat(walpath, &wal) == 0 && wal.st_size > 32;
                if (!wal_frames && pages * page_size > (uint64_t)size) {
                        set_error(ret_error,
                                  "%s: not an acs cache database (truncated: the header says %" PRIu64
                                  " bytes, the file has %" PRIu64 ")",
                                  path, pages * page_size, (uint64_t)size);
                        return -EBADMSG;
                }
        }
        return 0;
}

static int pragma_int(sqlite3 *db, const char *sql, int64_t *ret)
{
        sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

        if (rc == SQLITE_OK) {
                rc = sqlite3_step(st);
                if (rc == SQLITE_ROW) {
                        *ret = sqlite3_column_int64(st, 0);
                        rc = SQLITE_OK;
                }
        }
        sqlite3_finalize(st);
        return rc;
}

static int migrate(acs_store *s, const char *path, char **ret_error)
{
        int64_t version;
        int rc;

        rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
                goto fail;
        /* Read again under the write lock: another process may have migrated meanwhile. */
        rc = pragma_int(s->db, "PRAGMA user_version", &version);
        if (rc != SQLITE_OK)
                goto fail_rollback;
        for (; version < ACS_STORE_SCHEMA_VERSION; version++) {
                char sql[64];

                rc = sqlite3_exec(s->db, migrations[version], NULL, NULL, NULL);
                if (rc != SQLITE_OK)
                        goto fail_rollback;
                snprintf(sql, sizeof(sql), "PRAGMA user_version = %" PRId64, version + 1);
                rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
                if (rc != SQLITE_OK)
                        goto fail_rollback;
        }
        rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
                goto fail_rollback;
        return 0;

fail_rollback:
        set_error(ret_error, "%s: migrating the schema: %s", path, sqlite3_errmsg(s->db));
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return errno_from_sqlite(rc);
fail:
        set_error(ret_error, "%s: migrating the schema: %s", path, sqlite3_errmsg(s->db));
        return errno_from_sqlite(rc);
}

/*
 * Opens the SQLite file at path and makes it a usable store. creating: path is our own
 * fresh empty temporary file, so an empty database is expected and gets the schema.
 */
static int store_open_db(const char *path, unsigned flags, bool creating, acs_store **ret,
                         char **ret_error)
{
        acs_store *s;
        int64_t app_id, version, tables;
        int oflags, rc, r;

        s = calloc(1, sizeof(*s));
        if (!s) {
                set_error(ret_error, "%s: out of memory", path);
                return -ENOMEM;
        }
        s->readonly = (flags & ACS_STORE_READONLY) && !creating;
        oflags = (s->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) |
                 SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
        rc = sqlite3_open_v2(path, &s->db, oflags, NULL);
        if (rc != SQLITE_OK) {
                set_error(ret_error, "%s: %s", path,
                          s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
                r = errno_from_sqlite(rc);
                goto fail;
        }
        sqlite3_extended_result_codes(s->db, 1);
        sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
        if (!creating) {
                r = header_check(s, path, ret_error);
                if (r < 0)
                        goto fail;
        }

        /* Identify the file before anything could write to it. */
        rc = pragma_int(s->db, "PRAGMA application_id", &app_id);
        if (rc == SQLITE_OK)
                rc = pragma_int(s->db, "PRAGMA user_version", &version);
        if (rc == SQLITE_OK)
                rc = pragma_int(s->db, "SELECT count(*) FROM sqlite_schema", &tables);
        if (rc != SQLITE_OK) {
                r = errno_from_sqlite(rc);
                if (r == -EBADMSG)
                        set_error(ret_error, "%s: corrupt or not an acs cache database (%s)",
                                  path, sqlite3_errmsg(s->db));
                else
                        set_error(ret_error, "%s: %s", path, sqlite3_errmsg(s->db));
                goto fail;
        }
        if (creating ? (app_id != 0 || version != 0 || tables != 0) :
                       (app_id != ACS_APPLICATION_ID || version == 0)) {
                set_error(ret_error,
                          "%s: not an acs cache database (SQLite, but application_id %" PRId64
                          ", user_version %" PRId64 ", %" PRId64 " schema objects)",
                          path, app_id, version, tables);
                r = -EBADMSG;
                goto fail;
        }
        if (version > ACS_STORE_SCHEMA_VERSION) {
                set_error(ret_error,
                          "%s: schema version %" PRId64 " is newer than this program's %d",
                          path, version, ACS_STORE_SCHEMA_VERSION);
                r = -EPROTO;
                goto fail;
        }

        if (!s->readonly) {
                char *mode = NULL;
                sqlite3_stmt *st = NULL;

                rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
                if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
                        mode = strdup((const char *)sqlite3_column_text(st, 0));
                        rc = SQLITE_OK;
                }
                sqlite3_finalize(st);
                if (rc != SQLITE_OK || !mode || strcmp(mode, "wal") != 0) {
                        set_error(ret_error, "%s: cannot switch to WAL mode (%s)", path,
                                  rc != SQLITE_OK ? sqlite3_errmsg(s->db) : mode ? mode : "?");
                        free(mode);
                        r = rc != SQLITE_OK ? errno_from_sqlite(rc) : -EIO;
                        goto fail;
                }
                free(mode);
        }
        /* journal_size_limit: after a checkpoint, a WAL grown past 64 MiB by a large
         * transaction is truncated back instead of keeping its largest size forever. */
        rc = sqlite3_exec(s->db,
                          s->readonly ? "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL" :
                                        "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;"
                                        " PRAGMA journal_size_limit = 67108864",
                          NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
                set_error(ret_error, "%s: %s", path, sqlite3_errmsg(s->db));
                r = errno_from_sqlite(rc);
                goto fail;
        }
        if (version < ACS_STORE_SCHEMA_VERSION) {
                if (s->readonly) {
                        set_error(ret_error,
                                  "%s: schema version %" PRId64
                                  " must be migrated to %d; open it read-write once",
                                  path, version, ACS_STORE_SCHEMA_VERSION);
                        r = -EROFS;
                        goto fail;
                }
                r = migrate(s, path, ret_error);
                if (r < 0)
                        goto fail;
        }
        if (flags & ACS_STORE_CHECK) {
                sqlite3_stmt *st = NULL;
                bool ok = false;

                /* The first three problems are enough to name the damage. */
                rc = sqlite3_prepare_v2(s->db, "PRAGMA quick_check(3)", -1, &st, NULL);
                if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
                        const char *res = (const char *)sqlite3_column_text(st, 0);
                        ok = res && strcmp(res, "ok") == 0;
                        if (!ok) {
                                _cleanup_free_ char *flat = strdup(res ? res : "?");

                                for (char *p = flat; p && *p; p++)
                                        if (*p == '\n')
                                                *p = ' ';
                                set_error(ret_error, "%s: corrupt acs cache database: %s",
                                          path, flat ? flat : "?");
                        }
                        rc = SQLITE_OK;
                }
                if (rc != SQLITE_OK)
                        set_error(ret_error, "%s: corrupt acs cache database: %s", path,
                                  sqlite3_errmsg(s->db));
                sqlite3_finalize(st);
                if (!ok) {
                        r = -EBADMSG;
                        goto fail;
                }
        }
        *ret = s;
        return 0;

fail:
        acs_store_close(s);
        return r;
}

/*
 * Creates the database under a temporary name next to path, then links it into place:
 * a crash leaves either nothing or a complete database at path, and an existing file
 * (made by a concurrent creator) is never overwritten.
 */
static int store_create(const char *path, char **ret_error)
{
        _cleanup_free_ char *tmp = NULL, *dir = NULL;
        _cleanup_close_ int fd = -1;
        acs_store *s = NULL;
        char *slash;
        int r;

        if (asprintf(&tmp, "%s.new-XXXXXX", path) < 0) {
                tmp = NULL;
                set_error(ret_error, "%s: out of memory", path);
                return -ENOMEM;
        }
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0) {
                r = -errno;
                set_error(ret_error, "%s: cannot create: %s", path, strerror(-r));
                return r;
        }
        r = store_open_db(tmp, 0, true, &s, ret_error);
        if (r >= 0) {
                s = acs_store_close(s); /* checkpoints the WAL into the file */
                if (fsync(fd) < 0) {
                        r = -errno;
                        set_error(ret_error, "%s: fsync: %s", tmp, strerror(-r));
                }
        }
        if (r >= 0 && link(tmp, path) < 0 && errno != EEXIST) {
                r = -errno;
                set_error(ret_error, "%s: cannot create: %s", path, strerror(-r));
        }
        (void)unlink(tmp);
        if (r < 0)
                return r;
        dir = strdup(path);
        if (dir) {
                _cleanup_close_ int dfd = -1;

                slash = strrchr(dir, '/');
                if (slash)
                        *(slash == dir ? slash + 1 : slash) = '\0';
                dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (dfd >= 0)
                        (void)fsync(dfd);
        }
        return 0;
}

int acs_store_open(const char *path, unsigned flags, acs_store **ret, char **ret_error)
{
        struct stat st;
        int r;

        if (ret_error)
                *ret_error = NULL;
        if (!path || !ret || (flags & ~(unsigned)(ACS_STORE_CREATE | ACS_STORE_READONLY |
                                                    ACS_STORE_CHECK))) {
                set_error(ret_error, "%s: invalid arguments", path ? path : "(null)");
                return -EINVAL;
        }
        if (sodium_init() < 0) {
                set_error(ret_error, "%s: libsodium failed to initialize", path);
                return -EIO;
        }
        if (stat(path, &st) < 0) {
                r = -errno;
                if (r != -ENOENT || !(flags & ACS_STORE_CREATE)) {
                        set_error(ret_error, "%s: %s", path, strerror(-r));
                        return r;
                }
                r = store_create(path, ret_error);
                if (r < 0)
                        return r;
                if (stat(path, &st) < 0) {
                        r = -errno;
                        set_error(ret_error, "%s: %s", path, strerror(-r));
                        return r;
                }
        }
        r = precheck_file(path, &st, ret_error);
        if (r < 0)
                return r;
        return store_open_db(path, flags, false, ret, ret_error);
}

acs_store *acs_store_close(acs_store *s)
{
        if (!s)
                return NULL;
        blob_drop(s);
        if (s->in_tx && s->db && !sqlite3_get_autocommit(s->db))
                sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        for (size_t i = 0; i < _ST_MAX; i++)
                sqlite3_finalize(s->stmts[i]);
        sqlite3_close(s->db);
        free(s);
        return NULL;
}

/* ---- mailboxes ---- */

void acs_mailbox_clear(acs_mailbox *mb)
{
        if (!mb)
                return;
        free(mb->name);
        *mb = (acs_mailbox){ 0 };
}

/* Fills *mb from a row of MB_COLS; mb->name is borrowed from the statement. */
static void mailbox_row(sqlite3_stmt *st, acs_mailbox *mb)
{
        *mb = (acs_mailbox){
                .id = sqlite3_column_int64(st, 0),
                .name = (char *)sqlite3_column_text(st, 1),
                .delim = (char)sqlite3_column_int(st, 2),
                .attrs = (unsigned)sqlite3_column_int64(st, 3),
                .uidvalidity = (uint32_t)sqlite3_column_int64(st, 4),
                .uidnext = (uint32_t)sqlite3_column_int64(st, 5),
                .highestmodseq = (uint64_t)sqlite3_column_int64(st, 6),
                .mtime_ns = sqlite3_column_int64(st, 7),
        };
}

static int mailbox_fetch(acs_store *s, struct q *q, acs_mailbox *ret)
{
        acs_mailbox mb;
        int r = q_row(s, q);

        if (r < 0)
                return r;
        if (r == 0)
                return -ENOENT;
        mailbox_row(q->st, &mb);
        mb.name = strdup(mb.name ? mb.name : "");
        if (!mb.name)
                return -ENOMEM;
        *ret = mb;
        return 0;
}

int acs_store_mailbox_get(acs_store *s, const char *name, acs_mailbox *ret)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_MB_GET, &q);

        if (r < 0)
                return r;
        sqlite3_bind_text(q.st, 1, name, -1, SQLITE_STATIC);
        return mailbox_fetch(s, &q, ret);
}

int acs_store_mailbox_get_by_id(acs_store *s, int64_t id, acs_mailbox *ret)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_MB_GET_ID, &q);

        if (r < 0)
                return r;
        sqlite3_bind_int64(q.st, 1, id);
        return mailbox_fetch(s, &q, ret);
}

int acs_store_mailbox_put(acs_store *s, acs_mailbox *mb)
{
        bool own;
        int64_t id = 0;
        int r;

        if (!mb || !mb->name || !*mb->name || mb->delim < 0)
                return own_fail(s, -EINVAL, "invalid mailbox");
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MB_PUT, &q);
                if (r >= 0) {
                        sqlite3_bind_text(q.st, 1, mb->name, -1, SQLITE_STATIC);
                        sqlite3_bind_int(q.st, 2, mb->delim);
                        sqlite3_bind_int64(q.st, 3, mb->attrs);
                        r = q_row(s, &q);
                        if (r == 0)
                                r = own_fail(s, -EIO, "mailbox upsert returned no row");
                        if (r > 0) {
                                id = sqlite3_column_int64(q.st, 0);
                                r = q_exec(s, &q);
                        }
                }
        }
        r = w_end(s, own, r);
        if (r < 0)
                return r;
        mb->id = id;
        return 0;
}

/* Runs an UPDATE/DELETE statement q as one write; -ENOENT when it touched no row. */
static int write_one(acs_store *s, struct q *q)
{
        int r = q_exec(s, q);

        if (r < 0)
                return r;
        return sqlite3_changes64(s->db) > 0 ? 0 : -ENOENT;
}

int acs_store_mailbox_set_state(acs_store *s, int64_t id, uint32_t uidvalidity, uint32_t uidnext,
                                uint64_t highestmodseq)
{
        bool own;
        int r = w_begin(s, &own);

        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MB_SET_STATE, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        sqlite3_bind_int64(q.st, 2, uidvalidity);
                        sqlite3_bind_int64(q.st, 3, uidnext);
                        sqlite3_bind_int64(q.st, 4, (int64_t)highestmodseq);
                        r = write_one(s, &q);
                }
        }
        return w_end(s, own, r);
}

int acs_store_mailbox_rename(acs_store *s, int64_t id, const char *new_name)
{
        bool own;
        int r;

        if (!new_name || !*new_name)
                return own_fail(s, -EINVAL, "empty mailbox name");
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MB_RENAME, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        sqlite3_bind_text(q.st, 2, new_name, -1, SQLITE_STATIC);
                        r = write_one(s, &q);
                }
        }
        return w_end(s, own, r);
}

int acs_store_mailbox_delete(acs_store *s, int64_t id)
{
        bool own;
        int r = w_begin(s, &own);

        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MB_EXISTS, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        r = q_row(s, &q);
                        if (r == 0)
                                r = -ENOENT;
                }
        }
        /* Messages first, so the journal lists their removal before the mailbox's. */
        if (r >= 0) {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MB_DELETE_MSGS, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        r = q_exec(s, &q);
                }
        }
        if (r >= 0) {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MB_DELETE, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        r = write_one(s, &q);
                }
        }
        return w_end(s, own, r < 0 ? r : 0);
}

int acs_store_mailbox_foreach(acs_store *s, int (*cb)(const acs_mailbox *mb, void *userdata),
                              void *userdata)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_MB_ALL, &q);

        if (r < 0)
                return r;
        while ((r = q_row(s, &q)) > 0) {
                acs_mailbox mb;

                mailbox_row(q.st, &mb);
                r = cb(&mb, userdata);
                if (r != 0)
                        return r;
        }
        return r;
}

int acs_store_root_mtime(acs_store *s, int64_t *ret_ns)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_ROOT_MTIME, &q);

        if (r < 0)
                return r;
        r = q_row(s, &q);
        if (r < 0)
                return r;
        if (r == 0)
                return own_fail(s, -EBADMSG, "the root row is missing");
        *ret_ns = sqlite3_column_int64(q.st, 0);
        return 0;
}

/* ---- messages ---- */

void acs_message_clear(acs_message *m)
{
        if (!m)
                return;
        free(m->keywords);
        free(m->uniq);
        *m = (acs_message){ 0 };
}

/* Fills *m from a row of MSG_COLS; the strings are borrowed from the statement. */
static void message_row(sqlite3_stmt *st, acs_message *m)
{
        const unsigned char *kw = sqlite3_column_text(st, 5);
        const unsigned char *uniq = sqlite3_column_text(st, 9);

        *m = (acs_message){
                .id = sqlite3_column_int64(st, 0),
                .mailbox_id = sqlite3_column_int64(st, 1),
                .uid = (uint32_t)sqlite3_column_int64(st, 2),
                .modseq = (uint64_t)sqlite3_column_int64(st, 3),
                .flags = (unsigned)sqlite3_column_int64(st, 4),
                .keywords = (char *)(kw ? kw : (const unsigned char *)""),
                .internaldate = sqlite3_column_int64(st, 6),
                .size = (uint64_t)sqlite3_column_int64(st, 7),
                .vsize = (uint64_t)sqlite3_column_int64(st, 8),
                .uniq = (char *)(uniq ? uniq : (const unsigned char *)""),
                .body_id = sqlite3_column_int64(st, 10),
                .state = (unsigned)sqlite3_column_int64(st, 11),
        };
}

static int message_fetch(acs_store *s, struct q *q, acs_message *ret)
{
        acs_message m;
        char *kw, *uniq;
        int r = q_row(s, q);

        if (r < 0)
                return r;
        if (r == 0)
                return -ENOENT;
        message_row(q->st, &m);
        kw = strdup(m.keywords);
        uniq = strdup(m.uniq);
        if (!kw || !uniq) {
                free(kw);
                free(uniq);
                return -ENOMEM;
        }
        m.keywords = kw;
        m.uniq = uniq;
        *ret = m;
        return 0;
}

/* A Maildir unique part: not empty, no '/' and no ':' (the info separator). */
static bool uniq_valid(const char *u)
{
        return *u && !strchr(u, '/') && !strchr(u, ':');
}

int acs_store_message_add(acs_store *s, acs_message *m)
{
        _cleanup_free_ char *gen = NULL;
        int64_t id = 0;
        bool own;
        int r;

        if (!m || (m->uniq && !uniq_valid(m->uniq)) || (m->flags & ~(unsigned)ACS_FLAG_ALL))
                return own_fail(s, -EINVAL, "invalid message");
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MSG_NEXT_ID, &q);
                if (r >= 0)
                        r = q_row(s, &q);
                if (r == 0)
                        r = -EIO;
                if (r > 0)
                        id = sqlite3_column_int64(q.st, 0);
        }
        if (r >= 0 && !m->uniq && asprintf(&gen, "%" PRId64 ".M%" PRId64 ".acs",
                                           m->internaldate, id) < 0) {
                gen = NULL;
                r = -ENOMEM;
        }
        if (r >= 0) {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MSG_ADD, &q);
                if (r >= 0) {
                        sqlite3_stmt *st = q.st;

                        sqlite3_bind_int64(st, 1, id);
                        sqlite3_bind_int64(st, 2, m->mailbox_id);
                        bind_id_opt(st, 3, m->uid);
                        sqlite3_bind_int64(st, 4, (int64_t)m->modseq);
                        sqlite3_bind_int64(st, 5, m->flags);
                        sqlite3_bind_text(st, 6, m->keywords ? m->keywords : "", -1, SQLITE_STATIC);
                        sqlite3_bind_int64(st, 7, m->internaldate);
                        sqlite3_bind_int64(st, 8, (int64_t)m->size);
                        sqlite3_bind_int64(st, 9, (int64_t)m->vsize);
                        sqlite3_bind_text(st, 10, m->uniq ? m->uniq : gen, -1, SQLITE_STATIC);
                        bind_id_opt(st, 11, m->body_id);
                        sqlite3_bind_int64(st, 12, m->state);
                        r = q_exec(s, &q);
                }
        }
        r = w_end(s, own, r);
        if (r < 0)
                return r;
        m->id = id;
        if (!m->uniq)
                m->uniq = TAKE_PTR(gen);
        return 0;
}

int acs_store_message_get(acs_store *s, int64_t id, acs_message *ret)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_MSG_GET, &q);

        if (r < 0)
                return r;
        sqlite3_bind_int64(q.st, 1, id);
        return message_fetch(s, &q, ret);
}

int acs_store_message_get_by_uid(acs_store *s, int64_t mailbox_id, uint32_t uid, acs_message *ret)
{
        _cleanup_q_ struct q q = { 0 };
        int r;

        if (uid == 0)
                return -ENOENT;
        r = q_get(s, ST_MSG_GET_UID, &q);
        if (r < 0)
                return r;
        sqlite3_bind_int64(q.st, 1, mailbox_id);
        sqlite3_bind_int64(q.st, 2, uid);
        return message_fetch(s, &q, ret);
}

int acs_store_message_get_by_uniq(acs_store *s, int64_t mailbox_id, const char *uniq,
                                  acs_message *ret)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_MSG_GET_UNIQ, &q);

        if (r < 0)
                return r;
        sqlite3_bind_int64(q.st, 1, mailbox_id);
        sqlite3_bind_text(q.st, 2, uniq, -1, SQLITE_STATIC);
        return message_fetch(s, &q, ret);
}

int acs_store_message_set_flags(acs_store *s, int64_t id, unsigned flags, const char *keywords,
                                uint64_t modseq)
{
        bool own;
        int r;

        if (flags & ~(unsigned)ACS_FLAG_ALL)
                return own_fail(s, -EINVAL, "unknown flag bits 0x%x", flags);
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MSG_SET_FLAGS, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        sqlite3_bind_int64(q.st, 2, flags);
                        bind_text_opt(q.st, 3, keywords);
                        sqlite3_bind_int64(q.st, 4, (int64_t)modseq);
                        r = write_one(s, &q);
                }
        }
        return w_end(s, own, r);
}

/* One write statement whose only parameter is id; with must_touch, -ENOENT when it changed no row. */
static int write_id(acs_store *s, enum stmt_id sid, int64_t id, bool must_touch)
{
        bool own;
        int r = w_begin(s, &own);

        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, sid, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        r = must_touch ? write_one(s, &q) : q_exec(s, &q);
                }
        }
        return w_end(s, own, r);
}

/* One-statement update of message id with one integer (or 0 = NULL when null0). */
static int message_update(acs_store *s, enum stmt_id sid, int64_t id, int64_t v, bool null0)
{
        bool own;
        int r = w_begin(s, &own);

        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, sid, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        if (null0)
                                bind_id_opt(q.st, 2, v);
                        else
                                sqlite3_bind_int64(q.st, 2, v);
                        r = write_one(s, &q);
                }
        }
        return w_end(s, own, r);
}

int acs_store_message_set_uid(acs_store *s, int64_t id, uint32_t uid)
{
        return message_update(s, ST_MSG_SET_UID, id, uid, true);
}

int acs_store_message_set_state(acs_store *s, int64_t id, unsigned state)
{
        return message_update(s, ST_MSG_SET_STATE, id, state, false);
}

int acs_store_message_set_body(acs_store *s, int64_t id, int64_t body_id)
{
        if (body_id < 0)
                return own_fail(s, -EINVAL, "invalid body id");
        return message_update(s, ST_MSG_SET_BODY, id, body_id, true);
}

int acs_store_message_move(acs_store *s, int64_t id, int64_t mailbox_id, uint32_t uid,
                           const char *uniq)
{
        bool own;
        int r;

        if (uniq && !uniq_valid(uniq))
                return own_fail(s, -EINVAL, "invalid unique name");
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MSG_MOVE, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        sqlite3_bind_int64(q.st, 2, mailbox_id);
                        bind_id_opt(q.st, 3, uid);
                        bind_text_opt(q.st, 4, uniq);
                        r = write_one(s, &q);
                }
        }
        return w_end(s, own, r);
}

int acs_store_message_delete(acs_store *s, int64_t id)
{
        return write_id(s, ST_MSG_DELETE, id, true);
}

int acs_store_message_delete_uid(acs_store *s, int64_t mailbox_id, uint32_t uid)
{
        bool own;
        int r;

        if (uid == 0)
                return -ENOENT;
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_MSG_DELETE_UID, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, mailbox_id);
                        sqlite3_bind_int64(q.st, 2, uid);
                        r = write_one(s, &q);
                }
        }
        return w_end(s, own, r);
}

int acs_store_message_list(acs_store *s, int64_t mailbox_id, int64_t after_id, size_t limit,
                           int (*cb)(const acs_message *m, void *userdata), void *userdata)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_MSG_LIST, &q);

        if (r < 0)
                return r;
        sqlite3_bind_int64(q.st, 1, mailbox_id);
        sqlite3_bind_int64(q.st, 2, after_id);
        sqlite3_bind_int64(q.st, 3, limit == 0 || limit > INT64_MAX ? -1 : (int64_t)limit);
        while ((r = q_row(s, &q)) > 0) {
                acs_message m;

                message_row(q.st, &m);
                r = cb(&m, userdata);
                if (r != 0)
                        return r;
        }
        return r;
}

int acs_store_message_count(acs_store *s, int64_t mailbox_id, uint64_t *ret_count,
                            uint32_t *ret_max_uid)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_MSG_COUNT, &q);

        if (r < 0)
                return r;
        sqlite3_bind_int64(q.st, 1, mailbox_id);
        r = q_row(s, &q);
        if (r < 0)
                return r;
        if (r == 0)
                return -EIO;
        if (ret_count)
                *ret_count = (uint64_t)sqlite3_column_int64(q.st, 0);
        if (ret_max_uid)
                *ret_max_uid = (uint32_t)sqlite3_column_int64(q.st, 1);
        return 0;
}

int acs_store_message_uids(acs_store *s, int64_t mailbox_id,
                           int (*cb)(uint32_t uid, int64_t id, void *userdata), void *userdata)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_MSG_UIDS, &q);

        if (r < 0)
                return r;
        sqlite3_bind_int64(q.st, 1, mailbox_id);
        while ((r = q_row(s, &q)) > 0) {
                r = cb((uint32_t)sqlite3_column_int64(q.st, 0), sqlite3_column_int64(q.st, 1),
                       userdata);
                if (r != 0)
                        return r;
        }
        return r;
}

/* ---- bodies ---- */

/* Finds the body with this hash (excluding except_id): 1 and *ret_id, or 0. */
static int body_find(acs_store *s, const unsigned char hash[crypto_hash_sha256_BYTES],
                     int64_t except_id, int64_t *ret_id)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, except_id ? ST_BODY_FIND_OTHER : ST_BODY_FIND, &q);

        if (r < 0)
                return r;
        sqlite3_bind_blob(q.st, 1, hash, crypto_hash_sha256_BYTES, SQLITE_STATIC);
        if (except_id)
                sqlite3_bind_int64(q.st, 2, except_id);
        r = q_row(s, &q);
        if (r > 0)
                *ret_id = sqlite3_column_int64(q.st, 0);
        return r;
}

/* Inserts a body row and its data (data NULL: size zero bytes to be written later). */
static int body_insert(acs_store *s, const unsigned char *hash, const void *data, uint64_t size,
                       int64_t *ret_id)
{
        int64_t id;
        int r;

        if (size > INT_MAX)
                return own_fail(s, -EFBIG, "a body is limited to %d bytes", INT_MAX);
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_BODY_INSERT, &q);
                if (r < 0)
                        return r;
                if (hash)
                        sqlite3_bind_blob(q.st, 1, hash, crypto_hash_sha256_BYTES, SQLITE_STATIC);
                else
                        sqlite3_bind_null(q.st, 1);
                sqlite3_bind_int64(q.st, 2, (int64_t)size);
                r = q_exec(s, &q);
                if (r < 0)
                        return r;
                id = sqlite3_last_insert_rowid(s->db);
        }
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_BODY_DATA_INSERT, &q);
                if (r < 0)
                        return r;
                sqlite3_bind_int64(q.st, 1, id);
                if (data && size > 0)
                        sqlite3_bind_blob64(q.st, 2, data, size, SQLITE_STATIC);
                else
                        sqlite3_bind_zeroblob64(q.st, 2, size);
                r = q_exec(s, &q);
                if (r < 0)
                        return r;
        }
        *ret_id = id;
        return 0;
}

int acs_store_body_put(acs_store *s, const void *data, size_t len, int64_t *ret_id)
{
        unsigned char hash[crypto_hash_sha256_BYTES];
        int64_t id = 0;
        bool own;
        int r;

        if (!data && len > 0)
                return own_fail(s, -EINVAL, "no data");
        crypto_hash_sha256(hash, data ? data : (const void *)"", len);
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        r = body_find(s, hash, 0, &id);
        if (r == 0)
                r = body_insert(s, hash, data, len, &id);
        r = w_end(s, own, r < 0 ? r : 0);
        if (r < 0)
                return r;
        *ret_id = id;
        return 0;
}

int acs_store_body_create(acs_store *s, uint64_t size, int64_t *ret_id)
{
        int64_t id = 0;
        bool own;
        int r = w_begin(s, &own);

        if (r < 0)
                return r;
        r = body_insert(s, NULL, NULL, size, &id);
        r = w_end(s, own, r);
        if (r < 0)
                return r;
        *ret_id = id;
        return 0;
}

/* Makes s->blob an open handle on body id (writable when rw). */
static int blob_get(acs_store *s, int64_t id, bool rw)
{
        int rc;

        if (s->blob && s->blob_id == id && (s->blob_rw || !rw))
                return 0;
        if (s->blob && s->blob_rw == rw) {
                rc = sqlite3_blob_reopen(s->blob, id);
                if (rc == SQLITE_OK) {
                        s->blob_id = id;
                        return 0;
                }
        }
        blob_drop(s);
        rc = sqlite3_blob_open(s->db, "main", "body_data", "data", id, rw, &s->blob);
        if (rc != SQLITE_OK) {
                int r = sql_fail(s, rc);

                if (s->blob) { /* sqlite3_blob_open may leave a handle behind */
                        sqlite3_blob_close(s->blob);
                        s->blob = NULL;
                }
                /* "no such rowid" comes back as a plain SQLITE_ERROR */
                return rc == SQLITE_ERROR ? -ENOENT : r;
        }
        s->blob_id = id;
        s->blob_rw = rw;
        return 0;
}

int acs_store_body_write(acs_store *s, int64_t id, uint64_t offset, const void *data, size_t len)
{
        int rc, r;

        if (s->readonly)
                return own_fail(s, -EROFS, "the store was opened read-only");
        if (!s->in_tx)
                return own_fail(s, -EINVAL, "body_write must run inside a transaction");
        if (tx_lost(s))
                return own_fail(s, -EIO, "the transaction was rolled back by an earlier error");
        if (!s->blob || s->blob_id != id || !s->blob_rw) {
                /* Once per stream: a finished body is immutable (copies share it). */
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_BODY_UNFINISHED, &q);
                if (r < 0)
                        return r;
                sqlite3_bind_int64(q.st, 1, id);
                r = q_row(s, &q);
                if (r < 0)
                        return r;
                if (r == 0)
                        return -ENOENT;
                if (!sqlite3_column_int(q.st, 0))
                        return own_fail(s, -EPERM, "body %" PRId64 " is finished and cannot change", id);
        }
        r = blob_get(s, id, true);
        if (r < 0)
                return r;
        if (offset > (uint64_t)sqlite3_blob_bytes(s->blob) ||
            len > (uint64_t)sqlite3_blob_bytes(s->blob) - offset)
                return own_fail(s, -EINVAL, "write past the end of body %" PRId64, id);
        if (len == 0)
                return 0;
        rc = sqlite3_blob_write(s->blob, data, (int)len, (int)offset);
        if (rc != SQLITE_OK) {
                r = sql_fail(s, rc);
                blob_drop(s);
                return r;
        }
        return 0;
}

int acs_store_body_finish(acs_store *s, int64_t id, int64_t *ret_id)
{
        unsigned char hash[crypto_hash_sha256_BYTES];
        crypto_hash_sha256_state h;
        _cleanup_free_ unsigned char *buf = NULL;
        int64_t other = 0;
        int size, rc;
        bool own;
        int r = w_begin(s, &own);

        if (r < 0)
                return r;
        buf = malloc(HASH_CHUNK);
        if (!buf) {
                r = -ENOMEM;
                goto out;
        }
        r = blob_get(s, id, false);
        if (r < 0)
                goto out;
        size = sqlite3_blob_bytes(s->blob);
        crypto_hash_sha256_init(&h);
        for (int off = 0; off < size;) {
                int n = size - off < HASH_CHUNK ? size - off : HASH_CHUNK;

                rc = sqlite3_blob_read(s->blob, buf, n, off);
                if (rc != SQLITE_OK) {
                        r = sql_fail(s, rc);
                        goto out;
                }
                crypto_hash_sha256_update(&h, buf, (unsigned long long)n);
                off += n;
        }
        crypto_hash_sha256_final(&h, hash);
        blob_drop(s);
        r = body_find(s, hash, id, &other);
        if (r > 0) {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_BODY_DELETE, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        r = q_exec(s, &q);
                }
        } else if (r == 0) {
                _cleanup_q_ struct q q = { 0 };

                other = id;
                r = q_get(s, ST_BODY_SET_SHA, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, id);
                        sqlite3_bind_blob(q.st, 2, hash, sizeof(hash), SQLITE_STATIC);
                        r = write_one(s, &q);
                }
        }
out:
        blob_drop(s);
        r = w_end(s, own, r < 0 ? r : 0);
        if (r < 0)
                return r;
        *ret_id = other;
        return 0;
}

int acs_store_body_read(acs_store *s, int64_t id, uint64_t offset, void *buf, size_t len,
                        size_t *ret_n)
{
        bool retried = false;
        int size, n, rc, r;

again:
        r = blob_get(s, id, false);
        if (r < 0)
                return r;
        size = sqlite3_blob_bytes(s->blob);
        if (offset >= (uint64_t)size) {
                blob_drop(s);
                *ret_n = 0;
                return 0;
        }
        n = len < (uint64_t)size - offset ? (int)len : size - (int)offset;
        rc = sqlite3_blob_read(s->blob, buf, n, (int)offset);
        if (rc != SQLITE_OK) {
                r = sql_fail(s, rc);
                blob_drop(s);
                /* SQLITE_ABORT: the row changed since the handle was opened. */
                if ((rc & 0xff) == SQLITE_ABORT && !retried) {
                        retried = true;
                        goto again;
                }
                return r;
        }
        /* At the end of the body, let go of the read snapshot. */
        if ((uint64_t)offset + (uint64_t)n >= (uint64_t)size)
                blob_drop(s);
        *ret_n = (size_t)n;
        return 0;
}

int acs_store_body_size(acs_store *s, int64_t id, uint64_t *ret_size)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_BODY_SIZE, &q);

        if (r < 0)
                return r;
        sqlite3_bind_int64(q.st, 1, id);
        r = q_row(s, &q);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENOENT;
        *ret_size = (uint64_t)sqlite3_column_int64(q.st, 0);
        return 0;
}

/* ---- keywords ---- */

static bool keyword_valid(const char *k)
{
        if (!k || !*k)
                return false;
        for (const unsigned char *p = (const unsigned char *)k; *p; p++)
                if (*p <= ' ' || *p == 0x7f)
                        return false;
        return true;
}

/* The letter index of keyword, -ENOENT when it has none. */
static int keyword_get(acs_store *s, const char *keyword, int *ret_index)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_KW_GET, &q);

        if (r < 0)
                return r;
        sqlite3_bind_text(q.st, 1, keyword, -1, SQLITE_STATIC);
        r = q_row(s, &q);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENOENT;
        *ret_index = sqlite3_column_int(q.st, 0);
        return 0;
}

int acs_store_keyword_index(acs_store *s, const char *keyword, bool create, int *ret_index)
{
        int idx = -1;
        bool own;
        int r;

        if (!keyword_valid(keyword))
                return own_fail(s, -EINVAL, "invalid keyword");
        r = keyword_get(s, keyword, &idx);
        if (r != -ENOENT || !create) {
                if (r >= 0)
                        *ret_index = idx;
                return r;
        }
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        /* Look again under the write lock: another writer may have added it meanwhile. */
        r = keyword_get(s, keyword, &idx);
        if (r == -ENOENT) {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_KW_NEXT, &q);
                if (r >= 0)
                        r = q_row(s, &q);
                if (r == 0)
                        r = -EIO;
                if (r > 0) {
                        idx = sqlite3_column_int(q.st, 0);
                        r = 0;
                }
                q_release(&q);
                if (r >= 0 && idx >= 26)
                        r = own_fail(s, -ENOSPC, "all 26 keyword letters are in use");
                if (r >= 0) {
                        r = q_get(s, ST_KW_INSERT, &q);
                        if (r >= 0) {
                                sqlite3_bind_int(q.st, 1, idx);
                                sqlite3_bind_text(q.st, 2, keyword, -1, SQLITE_STATIC);
                                r = q_exec(s, &q);
                        }
                }
        }
        r = w_end(s, own, r);
        if (r < 0)
                return r;
        *ret_index = idx;
        return 0;
}

int acs_store_keyword_name(acs_store *s, int index, char **ret)
{
        _cleanup_q_ struct q q = { 0 };
        char *name;
        int r;

        if (index < 0 || index > 25)
                return -ENOENT;
        r = q_get(s, ST_KW_NAME, &q);
        if (r < 0)
                return r;
        sqlite3_bind_int(q.st, 1, index);
        r = q_row(s, &q);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENOENT;
        name = strdup((const char *)sqlite3_column_text(q.st, 0));
        if (!name)
                return -ENOMEM;
        *ret = name;
        return 0;
}

/* ---- change journal ---- */

int acs_store_changes_since(acs_store *s, int64_t after_seq,
                            int (*cb)(const acs_change *c, void *userdata), void *userdata)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_CH_SINCE, &q);

        if (r < 0)
                return r;
        sqlite3_bind_int64(q.st, 1, after_seq);
        while ((r = q_row(s, &q)) > 0) {
                sqlite3_stmt *st = q.st;
                acs_change c = {
                        .seq = sqlite3_column_int64(st, 0),
                        .kind = sqlite3_column_int(st, 1),
                        .mailbox_id = sqlite3_column_int64(st, 2),
                        .message_id = sqlite3_column_int64(st, 3),
                        .old_mailbox_id = sqlite3_column_int64(st, 4),
                        .old_flags = (unsigned)sqlite3_column_int64(st, 5),
                        .old_keywords = (const char *)sqlite3_column_text(st, 6),
                        .old_state = (unsigned)sqlite3_column_int64(st, 7),
                        .old_uniq = (const char *)sqlite3_column_text(st, 8),
                        .old_size = (uint64_t)sqlite3_column_int64(st, 9),
                        .old_vsize = (uint64_t)sqlite3_column_int64(st, 10),
                        .old_name = (const char *)sqlite3_column_text(st, 11),
                };

                r = cb(&c, userdata);
                if (r != 0)
                        return r;
        }
        return r;
}

int acs_store_change_last(acs_store *s, int64_t *ret_seq)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_CH_LAST, &q);

        if (r < 0)
                return r;
        r = q_row(s, &q);
        if (r < 0)
                return r;
        if (r == 0)
                return -EIO;
        *ret_seq = sqlite3_column_int64(q.st, 0);
        return 0;
}

int acs_store_changes_trim(acs_store *s, int64_t upto_seq)
{
        return write_id(s, ST_CH_TRIM, upto_seq, false);
}

/* ---- op log ---- */

void acs_op_clear(acs_op *op)
{
        if (!op)
                return;
        free(op->keywords_add);
        free(op->keywords_del);
        free(op->name);
        free(op->new_name);
        free(op->last_error);
        *op = (acs_op){ 0 };
}

int acs_store_op_add(acs_store *s, acs_op *op)
{
        int64_t seq = 0;
        bool own;
        int r;

        if (!op || op->kind < ACS_OP_FLAGS || op->kind > ACS_OP_RENAME)
                return own_fail(s, -EINVAL, "invalid op");
        if (!s->in_tx || !s->durable)
                return own_fail(s, -EINVAL, "op_add must run in a durable transaction");
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_OP_ADD, &q);
                if (r >= 0) {
                        sqlite3_stmt *st = q.st;

                        sqlite3_bind_int(st, 1, op->kind);
                        sqlite3_bind_int64(st, 2, op->mailbox_id);
                        sqlite3_bind_int64(st, 3, op->message_id);
                        sqlite3_bind_int64(st, 4, op->uid);
                        sqlite3_bind_int64(st, 5, op->target_mailbox_id);
                        sqlite3_bind_int64(st, 6, op->flags_add);
                        sqlite3_bind_int64(st, 7, op->flags_del);
                        bind_text_opt(st, 8, op->keywords_add);
                        bind_text_opt(st, 9, op->keywords_del);
                        bind_id_opt(st, 10, op->body_id);
                        sqlite3_bind_int64(st, 11, op->internaldate);
                        bind_text_opt(st, 12, op->name);
                        bind_text_opt(st, 13, op->new_name);
                        sqlite3_bind_int64(st, 14, op->attempts);
                        bind_text_opt(st, 15, op->last_error);
                        r = q_exec(s, &q);
                        if (r >= 0)
                                seq = sqlite3_last_insert_rowid(s->db);
                }
        }
        r = w_end(s, own, r);
        if (r < 0)
                return r;
        op->seq = seq;
        return 0;
}

int acs_store_op_next(acs_store *s, int64_t after_seq, acs_op *ret)
{
        _cleanup_q_ struct q q = { 0 };
        acs_op op = { 0 };
        sqlite3_stmt *st;
        int r = q_get(s, ST_OP_NEXT, &q);

        if (r < 0)
                return r;
        st = q.st;
        sqlite3_bind_int64(st, 1, after_seq);
        r = q_row(s, &q);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENOENT;
        op.seq = sqlite3_column_int64(st, 0);
        op.kind = sqlite3_column_int(st, 1);
        op.mailbox_id = sqlite3_column_int64(st, 2);
        op.message_id = sqlite3_column_int64(st, 3);
        op.uid = (uint32_t)sqlite3_column_int64(st, 4);
        op.target_mailbox_id = sqlite3_column_int64(st, 5);
        op.flags_add = (unsigned)sqlite3_column_int64(st, 6);
        op.flags_del = (unsigned)sqlite3_column_int64(st, 7);
        op.body_id = sqlite3_column_int64(st, 10);
        op.internaldate = sqlite3_column_int64(st, 11);
        op.attempts = (unsigned)sqlite3_column_int64(st, 14);
        if (dup_opt(sqlite3_column_text(st, 8), &op.keywords_add) < 0 ||
            dup_opt(sqlite3_column_text(st, 9), &op.keywords_del) < 0 ||
            dup_opt(sqlite3_column_text(st, 12), &op.name) < 0 ||
            dup_opt(sqlite3_column_text(st, 13), &op.new_name) < 0 ||
            dup_opt(sqlite3_column_text(st, 15), &op.last_error) < 0) {
                acs_op_clear(&op);
                return -ENOMEM;
        }
        *ret = op;
        return 0;
}

int acs_store_op_done(acs_store *s, int64_t seq)
{
        return write_id(s, ST_OP_DONE, seq, true);
}

int acs_store_op_failed(acs_store *s, int64_t seq, const char *error)
{
        bool own;
        int r = w_begin(s, &own);

        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_OP_FAILED, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, seq);
                        bind_text_opt(q.st, 2, error);
                        r = write_one(s, &q);
                }
        }
        return w_end(s, own, r);
}

int acs_store_op_resolve_uid(acs_store *s, int64_t message_id, int64_t mailbox_id, uint32_t uid)
{
        int64_t n = 0;
        bool own;
        int r;

        if (message_id <= 0 || uid == 0)
                return own_fail(s, -EINVAL, "resolve_uid needs a message id and a uid");
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, ST_OP_RESOLVE_UID, &q);
                if (r >= 0) {
                        sqlite3_bind_int64(q.st, 1, message_id);
                        sqlite3_bind_int64(q.st, 2, mailbox_id);
                        sqlite3_bind_int64(q.st, 3, uid);
                        r = q_exec(s, &q);
                        if (r >= 0)
                                n = sqlite3_changes64(s->db);
                }
        }
        r = w_end(s, own, r);
        if (r < 0)
                return r;
        return n > INT_MAX ? INT_MAX : (int)n;
}

int acs_store_op_count(acs_store *s, uint64_t *ret_count)
{
        _cleanup_q_ struct q q = { 0 };
        int r = q_get(s, ST_OP_COUNT, &q);

        if (r < 0)
                return r;
        r = q_row(s, &q);
        if (r < 0)
                return r;
        if (r == 0)
                return -EIO;
        *ret_count = (uint64_t)sqlite3_column_int64(q.st, 0);
        return 0;
}

/* ---- meta ---- */

int acs_store_settle(acs_store *s)
{
        struct timespec ts;
        char v[64];
        int r;

        /* a value that changes every time: the write must produce a WAL frame */
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(v, sizeof(v), "%ld.%09ld %ld", (long)ts.tv_sec, ts.tv_nsec, (long)getpid());
        r = acs_store_begin(s, true);
        if (r < 0)
                return r;
        r = acs_store_meta_set(s, "settled", v);
        if (r == 0)
                r = acs_store_commit(s);
        if (r < 0)
                acs_store_rollback(s); /* a busy COMMIT leaves the transaction open */
        return r;
}

int acs_store_meta_get(acs_store *s, const char *key, char **ret_value)
{
        _cleanup_q_ struct q q = { 0 };
        char *v;
        int r = q_get(s, ST_META_GET, &q);

        if (r < 0)
                return r;
        sqlite3_bind_text(q.st, 1, key, -1, SQLITE_STATIC);
        r = q_row(s, &q);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENOENT;
        v = strdup((const char *)sqlite3_column_text(q.st, 0));
        if (!v)
                return -ENOMEM;
        *ret_value = v;
        return 0;
}

int acs_store_meta_set(acs_store *s, const char *key, const char *value)
{
        bool own;
        int r;

        if (!key)
                return own_fail(s, -EINVAL, "no key");
        r = w_begin(s, &own);
        if (r < 0)
                return r;
        {
                _cleanup_q_ struct q q = { 0 };

                r = q_get(s, value ? ST_META_SET : ST_META_DEL, &q);
                if (r >= 0) {
                        sqlite3_bind_text(q.st, 1, key, -1, SQLITE_STATIC);
                        if (value)
                                sqlite3_bind_text(q.st, 2, value, -1, SQLITE_STATIC);
                        r = q_exec(s, &q);
                }
        }
        return w_end(s, own, r);
}
