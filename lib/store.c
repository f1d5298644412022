/* SPDX-License-Identifier: MIT */
/* (being written) */
#include "acs/store.h"
