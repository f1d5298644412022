/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/config.c (being written). */
#include "test.h"
#include "acs/config.h"

TEST_MAIN()
