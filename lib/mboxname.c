/* SPDX-License-Identifier: MIT */
/* (being written) */
#include "acs/mboxname.h"
