/* SPDX-License-Identifier: MIT */
/* acsd's intrusive doubly linked lists (children of the loop, connections of server.c and session.c): add at the front, unlink. */
#pragma once

/*
 * head is the list's first-element pointer (an lvalue); item a pointer to an element with
 * members prev and next. Both are evaluated more than once: pass plain expressions.
 * Neither allocates nor frees.
 */

/* Puts item, not in any list, at the front. */
#define ACS_LIST_PREPEND(head, item)                    \
        do {                                            \
                (item)->prev = NULL;                    \
                (item)->next = (head);                  \
                if (head)                               \
                        (head)->prev = (item);          \
                (head) = (item);                        \
        } while (0)

/* Takes item out of the list (its own prev/next are left as they were). */
#define ACS_LIST_REMOVE(head, item)                             \
        do {                                                    \
                if ((item)->prev)                               \
                        (item)->prev->next = (item)->next;      \
                else                                            \
                        (head) = (item)->next;                  \
                if ((item)->next)                               \
                        (item)->next->prev = (item)->prev;      \
        } while (0)
