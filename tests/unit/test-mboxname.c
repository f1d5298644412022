/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/mboxname.c (being written). */
#include "test.h"
#include "acs/mboxname.h"

TEST_MAIN()
