/* SPDX-License-Identifier: MIT */
/* Unit tests for ctl/vault.c: put/get/delete/wipe, bounds, no plaintext at rest, guard pages, non-dumpable. */
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sodium.h>

#include "acs/util.h"
#include "acs/wire.h"
#include "vault.h"

static acs_vault *new_vault(void)
{
        CHECK_INT(acs_wire_init(), 0);
        acs_vault *v = NULL;
        CHECK_INT(acs_vault_new(&v), 0);
        return v;
}

static void check_get(acs_vault *v, const char *user, const void *want, size_t want_len)
{
        char *s = NULL;
        size_t len = 0;
        CHECK_INT(acs_vault_get(v, user, &s, &len), 0);
        CHECK_INT(len, want_len);
        if (s) {
                CHECK(memcmp(s, want, want_len) == 0);
                CHECK_INT(s[len], 0);
        }
        s = acs_secret_free(s);
}

TEST(put_get_replace_delete)
{
        _cleanup_vault_ acs_vault *v = new_vault();
        CHECK_INT(acs_vault_count(v), 0);
        CHECK_INT(acs_vault_put(v, "user1", "pass1", 5), 0);
        CHECK_INT(acs_vault_put(v, "user2", "pass two", 8), 0);
        static const char binary[] = "a\0b\xff\x01 c"; /* any bytes, even NUL */
        CHECK_INT(acs_vault_put(v, "bin@example.org", binary, sizeof(binary)), 0);
        CHECK_INT(acs_vault_count(v), 3);
        check_get(v, "user1", "pass1", 5);
        check_get(v, "user2", "pass two", 8);
        check_get(v, "bin@example.org", binary, sizeof(binary));
        /* get twice: each a fresh copy */
        check_get(v, "user1", "pass1", 5);

        CHECK_INT(acs_vault_put(v, "user1", "newer", 5), 0);
        CHECK_INT(acs_vault_count(v), 3);
        check_get(v, "user1", "newer", 5);

        CHECK_INT(acs_vault_delete(v, "user2"), 0);
        CHECK_INT(acs_vault_delete(v, "user2"), -ENOENT);
        CHECK_INT(acs_vault_count(v), 2);
        char *s = NULL;
        size_t len = 99;
        CHECK_INT(acs_vault_get(v, "user2", &s, &len), -ENOENT);
        CHECK(s == NULL && len == 99); /* outputs untouched on failure */
        check_get(v, "user1", "newer", 5);
        check_get(v, "bin@example.org", binary, sizeof(binary));

        acs_vault_wipe_all(v);
        CHECK_INT(acs_vault_count(v), 0);
        CHECK_INT(acs_vault_get(v, "user1", &s, &len), -ENOENT);
        CHECK_INT(acs_vault_put(v, "user1", "again", 5), 0);
        check_get(v, "user1", "again", 5);
        CHECK(acs_vault_free(NULL) == NULL);
}

TEST(bounds)
{
        _cleanup_vault_ acs_vault *v = new_vault();
        static char big[ACS_VAULT_SECRET_MAX + 1];
        memset(big, 'x', sizeof(big));
        static char longuser[ACS_VAULT_USER_MAX + 2];
        memset(longuser, 'u', sizeof(longuser) - 1);
        CHECK_INT(acs_vault_put(v, "u", big, ACS_VAULT_SECRET_MAX), 0);
        check_get(v, "u", big, ACS_VAULT_SECRET_MAX);
        CHECK_INT(acs_vault_put(v, "u", big, ACS_VAULT_SECRET_MAX + 1), -EINVAL);
        CHECK_INT(acs_vault_put(v, "u", "", 0), -EINVAL);
        CHECK_INT(acs_vault_put(v, "u", NULL, 3), -EINVAL);
        CHECK_INT(acs_vault_put(v, "", "p", 1), -EINVAL);
        CHECK_INT(acs_vault_put(v, NULL, "p", 1), -EINVAL);
        CHECK_INT(acs_vault_put(v, longuser, "p", 1), -EINVAL);
        longuser[ACS_VAULT_USER_MAX] = 0;
        CHECK_INT(acs_vault_put(v, longuser, "p", 1), 0);
        check_get(v, longuser, "p", 1);
        char *s;
        size_t len;
        CHECK_INT(acs_vault_get(v, "", &s, &len), -EINVAL);
        CHECK_INT(acs_vault_delete(v, ""), -EINVAL);
        CHECK_INT(acs_vault_count(v), 2);
}

TEST(many_users)
{
        _cleanup_vault_ acs_vault *v = new_vault();
        char user[32], pw[32];
        for (int i = 0; i < 2000; i++) {
                snprintf(user, sizeof(user), "user%d", i);
                snprintf(pw, sizeof(pw), "pw-%d-%d", i, i * 7);
                CHECK_INT(acs_vault_put(v, user, pw, strlen(pw)), 0);
        }
        CHECK_INT(acs_vault_count(v), 2000);
        for (int i = 0; i < 2000; i += 2) {
                snprintf(user, sizeof(user), "user%d", i);
                CHECK_INT(acs_vault_delete(v, user), 0);
        }
        for (int i = 0; i < 2000; i++) {
                snprintf(user, sizeof(user), "user%d", i);
                snprintf(pw, sizeof(pw), "pw-%d-%d", i, i * 7);
                if (i % 2) {
                        check_get(v, user, pw, strlen(pw));
                } else {
                        char *s;
                        size_t len;
                        CHECK_INT(acs_vault_get(v, user, &s, &len), -ENOENT);
                }
        }
}

/* Reads [lo, hi) of our own memory through /proc/self/mem (so sanitizers see no raw
 * reads of foreign heap bytes) and reports whether needle occurs in it. */
static bool mem_contains(int memfd, unsigned long lo, unsigned long hi, const char *needle, size_t n)
{
        enum { CHUNK = 1 << 20 };
        static char buf[CHUNK + 64];
        size_t carry = 0;
        for (unsigned long at = lo; at < hi;) {
                size_t want = hi - at < CHUNK ? hi - at : CHUNK;
                ssize_t got = pread(memfd, buf + carry, want, (off_t)at);
                if (got <= 0)
                        return false;
                if (memmem(buf, carry + (size_t)got, needle, n))
                        return true;
                size_t keep = n - 1 < carry + (size_t)got ? n - 1 : carry + (size_t)got;
                memmove(buf, buf + carry + (size_t)got - keep, keep);
                carry = keep;
                at += (unsigned long)got;
        }
        return false;
}

/*
 * The plaintext is kept nowhere but in what get hands out: after two puts (and the
 * caller's copy being static read-only data), no writable private mapping of the process
 * up to 64 MiB (heap, anonymous maps, stack, sodium_malloc'd pages) holds it.
 */
TEST(plaintext_not_kept)
{
        _cleanup_vault_ acs_vault *v = new_vault();
        static const char pw[] = "Very-Distinct-Password-4711";
        char needle[sizeof(pw)];
        CHECK_INT(acs_vault_put(v, "a", pw, sizeof(pw) - 1), 0);
        CHECK_INT(acs_vault_put(v, "b", pw, sizeof(pw) - 1), 0);
        FILE *maps = fopen("/proc/self/maps", "r");
        int memfd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
        CHECK(maps != NULL && memfd >= 0);
        char line[512];
        int found = 0, scanned = 0;
        while (maps && memfd >= 0 && fgets(line, sizeof(line), maps)) {
                unsigned long lo, hi;
                char perms[8];
                if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
                        continue;
                if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || hi - lo > (64ul << 20))
                        continue;
                /* the needle itself is built on the stack only now, below */
                scanned++;
                if (mem_contains(memfd, lo, hi, pw, sizeof(pw) - 1)) {
                        printf("#   plaintext found in %s", line);
                        found++;
                }
        }
        if (maps)
                fclose(maps);
        if (memfd >= 0)
                close(memfd);
        CHECK_INT(found, 0);
        CHECK(scanned > 3);
        /* And the scan does find a copy when there is one: the control case. */
        memcpy(needle, pw, sizeof(pw));
        char *copy = malloc(sizeof(pw));
        memcpy(copy, needle, sizeof(pw));
        sodium_memzero(needle, sizeof(needle));
        maps = fopen("/proc/self/maps", "r");
        memfd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
        int found_copy = 0;
        while (maps && memfd >= 0 && fgets(line, sizeof(line), maps)) {
                unsigned long lo, hi;
                char perms[8];
                if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
                        continue;
                if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || hi - lo > (64ul << 20))
                        continue;
                if ((unsigned long)copy >= lo && (unsigned long)copy < hi)
                        found_copy += mem_contains(memfd, lo, hi, pw, sizeof(pw) - 1);
        }
        if (maps)
                fclose(maps);
        if (memfd >= 0)
                close(memfd);
        CHECK_INT(found_copy, 1);
        sodium_memzero(copy, sizeof(pw));
        free(copy);
        check_get(v, "a", pw, sizeof(pw) - 1);
        check_get(v, "b", pw, sizeof(pw) - 1);
}

static long vmlck_kb(void)
{
        FILE *f = fopen("/proc/self/status", "r");
        char line[256];
        long kb = -1;
        while (f && fgets(line, sizeof(line), f))
                if (sscanf(line, "VmLck: %ld kB", &kb) == 1)
                        break;
        if (f)
                fclose(f);
        return kb;
}

/* The vault key and handed-out secrets are in locked memory (never swapped). */
TEST(secrets_locked)
{
        CHECK_INT(acs_wire_init(), 0);
#ifdef __SANITIZE_ADDRESS__
        /* ASan intercepts mlock() as a no-op (its shadow memory cannot be locked). */
        printf("# lock check not run under AddressSanitizer (mlock is a no-op there)\n");
        return;
#endif
        long before = vmlck_kb();
        CHECK(before >= 0);
        acs_vault *v = NULL;
        CHECK_INT(acs_vault_new(&v), 0);
        long with_vault = vmlck_kb();
        CHECK(with_vault > before);
        CHECK_INT(acs_vault_put(v, "u", "pw", 2), 0);
        char *s;
        size_t len;
        CHECK_INT(acs_vault_get(v, "u", &s, &len), 0);
        CHECK(vmlck_kb() > with_vault);
        s = acs_secret_free(s);
        CHECK_INT(vmlck_kb(), with_vault);
        v = acs_vault_free(v);
        CHECK_INT(vmlck_kb(), before);
}

static sigjmp_buf segv_jmp;
static void on_segv(int sig)
{
        (void)sig;
        siglongjmp(segv_jmp, 1);
}

/*
 * sodium_malloc puts a guard page right after the allocation: reading past a handed-out
 * secret faults instead of leaking neighbouring memory. Checked in a child so a failure
 * cannot take the test down (and skipped under valgrind, which reports it as an error).
 */
TEST(secret_guard_page)
{
        const char *preload = getenv("LD_PRELOAD");
        if (getenv("ACS_UNDER_VALGRIND") || (preload && strstr(preload, "vgpreload"))) {
                printf("# guard page check not run under valgrind (it reports the intended fault)\n");
                return;
        }
        _cleanup_vault_ acs_vault *v = new_vault();
        CHECK_INT(acs_vault_put(v, "u", "12345678", 8), 0);
        char *s;
        size_t len;
        CHECK_INT(acs_vault_get(v, "u", &s, &len), 0);
        pid_t pid = fork();
        if (pid == 0) {
                signal(SIGSEGV, on_segv);
                if (sigsetjmp(segv_jmp, 1))
                        _exit(42);
                /* sodium_malloc right-aligns: s + len + 1 (past the NUL) is on the guard page,
                 * up to the allocator's alignment of 16 bytes. */
                volatile char *p = s;
                for (size_t i = 0; i < 64; i++)
                        (void)p[len + 1 + i];
                _exit(0);
        }
        int st = 0;
        CHECK_INT(waitpid(pid, &st, 0), pid);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 42);
        acs_secret_free(s);
}

TEST(nodump)
{
        /* In a child: the flag is per process and the test runner may want core dumps. */
        pid_t pid = fork();
        if (pid == 0) {
                if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 1)
                        _exit(10);
                if (acs_vault_nodump() != 0)
                        _exit(11);
                if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0)
                        _exit(12);
                /* The helper clears it whatever it was. */
                prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
                if (acs_vault_nodump() != 0 || prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0)
                        _exit(13);
                if (geteuid() == 0) {
                        /* A real privilege change: the kernel sets dumpable to
                         * fs.suid_dumpable (0, 1 or 2), whatever it was; the helper
                         * must be called again. */
                        FILE *f = fopen("/proc/sys/fs/suid_dumpable", "r");
                        int sd = -1;
                        if (!f || fscanf(f, "%d", &sd) != 1)
                                _exit(14);
                        fclose(f);
                        prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
                        if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
                                _exit(15);
                        if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != sd)
                                _exit(16);
                        if (acs_vault_nodump() != 0 || prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0)
                                _exit(17);
                }
                _exit(0);
        }
        int st = 0;
        CHECK_INT(waitpid(pid, &st, 0), pid);
        CHECK(WIFEXITED(st));
        CHECK_INT(WEXITSTATUS(st), 0);
}

TEST_MAIN()
