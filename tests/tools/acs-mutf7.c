/* SPDX-License-Identifier: MIT */
/* acs-mutf7: converts mailbox names read one per line on stdin (-e UTF-8 -> mUTF-7, -d back). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acs/mboxname.h"

static void usage(void)
{
        fprintf(stderr, "usage: acs-mutf7 -e|-d < names\n"
                        "  -e  encode UTF-8 names to IMAP modified UTF-7\n"
                        "  -d  decode modified UTF-7 names to UTF-8\n"
                        "Prints one line per input line: the converted name or \"ERR <reason>\".\n");
}

int main(int argc, char **argv)
{
        int mode = 0, opt;
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;

        while ((opt = getopt(argc, argv, "edh")) != -1) {
                switch (opt) {
                case 'e':
                case 'd':
                        mode = opt;
                        break;
                default:
                        usage();
                        return opt == 'h' ? 0 : 2;
                }
        }
        if (!mode || optind != argc) {
                usage();
                return 2;
        }

        while ((len = getline(&line, &cap, stdin)) >= 0) {
                char *out = NULL;
                const char *error = NULL;
                int r;

                if (len > 0 && line[len - 1] == '\n')
                        line[--len] = '\0';
                if (strlen(line) != (size_t)len) {
                        printf("ERR NUL byte in input\n");
                        continue;
                }
                r = mode == 'e' ? acs_utf8_to_mutf7(line, &out, &error)
                                : acs_mutf7_to_utf8(line, &out, &error);
                if (r < 0)
                        printf("ERR %s\n", error ? error : strerror(-r));
                else
                        printf("%s\n", out);
                free(out);
        }
        free(line);
        if (fflush(stdout) != 0 || ferror(stdin)) {
                perror("acs-mutf7");
                return 1;
        }
        return 0;
}
