/* SPDX-License-Identifier: MIT */
/* (being written) */
#include "acs/config.h"
