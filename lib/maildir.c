/* SPDX-License-Identifier: MIT */
/* (being written) */
#include "acs/maildir.h"
