/* SPDX-License-Identifier: MIT */
/* (being written) */
#include "acs/log.h"
