/* SPDX-License-Identifier: MIT */
/* A tiny TAP test helper: TEST(name) { ... CHECK(cond); } and TEST_MAIN() running them all. */
#pragma once

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
struct test_case { const char *name; test_fn fn; };

extern int test_failed_checks;
extern struct test_case test_cases[];
extern int test_case_count;

#define TEST_MAX 512

/* Registers a test function at load time. */
#define TEST(name)                                                                         \
        static void test_##name(void);                                                     \
        __attribute__((constructor)) static void test_register_##name(void)                \
        {                                                                                  \
                if (test_case_count < TEST_MAX)                                            \
                        test_cases[test_case_count++] = (struct test_case){ #name, test_##name }; \
        }                                                                                  \
        static void test_##name(void)

#define CHECK(cond)                                                                        \
        do {                                                                               \
                if (!(cond)) {                                                             \
                        printf("#   %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
                        test_failed_checks++;                                              \
                }                                                                          \
        } while (0)

#define CHECK_INT(a, b)                                                                    \
        do {                                                                               \
                long long _a = (long long)(a), _b = (long long)(b);                        \
                if (_a != _b) {                                                            \
                        printf("#   %s:%d: %s == %lld, expected %s == %lld\n", __FILE__,   \
                               __LINE__, #a, _a, #b, _b);                                  \
                        test_failed_checks++;                                              \
                }                                                                          \
        } while (0)

#define CHECK_STR(a, b)                                                                    \
        do {                                                                               \
                const char *_a = (a), *_b = (b);                                           \
                if (!_a || !_b || strcmp(_a, _b) != 0) {                                   \
                        printf("#   %s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__,     \
                               __LINE__, #a, _a ? _a : "(null)", _b ? _b : "(null)");      \
                        test_failed_checks++;                                              \
                }                                                                          \
        } while (0)

/* Defines main(): runs every registered test (or those named in argv), prints TAP. */
#define TEST_MAIN()                                                                        \
        int test_failed_checks;                                                            \
        struct test_case test_cases[TEST_MAX];                                             \
        int test_case_count;                                                               \
        int main(int argc, char **argv)                                                    \
        {                                                                                  \
                int failed = 0, n = 0;                                                     \
                printf("1..%d\n", argc > 1 ? argc - 1 : test_case_count);                 \
                for (int i = 0; i < test_case_count; i++) {                                \
                        if (argc > 1) {                                                    \
                                int want = 0;                                              \
                                for (int j = 1; j < argc; j++)                             \
                                        want |= strcmp(argv[j], test_cases[i].name) == 0;  \
                                if (!want)                                                 \
                                        continue;                                          \
                        }                                                                  \
                        int before = test_failed_checks;                                   \
                        test_cases[i].fn();                                                \
                        n++;                                                               \
                        if (test_failed_checks != before) {                                \
                                failed++;                                                  \
                                printf("not ok %d - %s\n", n, test_cases[i].name);         \
                        } else {                                                           \
                                printf("ok %d - %s\n", n, test_cases[i].name);             \
                        }                                                                  \
                        fflush(stdout);                                                    \
                }                                                                          \
                return failed ? 1 : 0;                                                     \
        }
