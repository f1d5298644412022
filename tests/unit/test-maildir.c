/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/maildir.c (being written). */
#include "test.h"
#include "acs/maildir.h"

TEST_MAIN()
