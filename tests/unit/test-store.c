/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/store.c (being written). */
#include "test.h"
#include "acs/store.h"

TEST_MAIN()
