/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/log.c (being written). */
#include "test.h"
#include "acs/log.h"

TEST_MAIN()
