/* nbdkit-fleece: a small JSON writer onto a stdio stream.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * The status and control replies are flat JSON objects with a fixed
 * order of members.  This writer puts them out in that order with
 * correct string escaping: '"' and '\\' are backslashed, and every
 * byte outside printable ASCII becomes \u00XX, so the output is
 * always valid (ASCII) JSON whatever bytes a string holds.
 *
 * Writing into a fixed buffer: open it with fmemopen(3) (or use
 * json_to_buffer) and pass the FILE *.
 *
 * Members: a struct json_writer remembers whether the next member
 * needs a comma before it.  Start it with json_begin (writes "{") or,
 * to add members to an object someone else opened, with json_init
 * (comma = true when members stand before).
 */

#ifndef NBDKIT_FLEECE_JSON_H
#define NBDKIT_FLEECE_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct json_writer {
  FILE *fp;
  bool comma;                   /* the next member needs a ',' first */
};

/* Print S as a JSON string (quoted, escaped), or null if S is NULL. */
extern void json_string (FILE *fp, const char *s)
  __attribute__ ((__nonnull__ (1)));

/* Start writing members to FP; COMMA if members already stand before. */
extern void json_init (struct json_writer *w, FILE *fp, bool comma)
  __attribute__ ((__nonnull__ (1, 2)));

/* Write "{" to FP and start writing its members. */
extern void json_begin (struct json_writer *w, FILE *fp)
  __attribute__ ((__nonnull__ (1, 2)));

/* Write "}" (the end of the object json_begin started). */
extern void json_end (struct json_writer *w)
  __attribute__ ((__nonnull__ (1)));

/* Write "[" to FP and start writing its elements. */
extern void json_begin_array (struct json_writer *w, FILE *fp)
  __attribute__ ((__nonnull__ (1, 2)));

/* Write "]" (the end of the array json_begin_array started). */
extern void json_end_array (struct json_writer *w)
  __attribute__ ((__nonnull__ (1)));

/* Write the separator before an element of an array: the caller
 * writes the element.
 */
extern void json_element (struct json_writer *w)
  __attribute__ ((__nonnull__ (1)));

/* Write the separator and "NAME": the caller writes the value. */
extern void json_key (struct json_writer *w, const char *name)
  __attribute__ ((__nonnull__ (1, 2)));

/* Members of each type.  A NULL string is written as null. */
extern void json_member_string (struct json_writer *w, const char *name,
                                const char *s)
  __attribute__ ((__nonnull__ (1, 2)));
extern void json_member_int (struct json_writer *w, const char *name,
                             int64_t v)
  __attribute__ ((__nonnull__ (1, 2)));
extern void json_member_uint (struct json_writer *w, const char *name,
                              uint64_t v)
  __attribute__ ((__nonnull__ (1, 2)));
extern void json_member_bool (struct json_writer *w, const char *name,
                              bool v)
  __attribute__ ((__nonnull__ (1, 2)));
extern void json_member_null (struct json_writer *w, const char *name)
  __attribute__ ((__nonnull__ (1, 2)));

/* A double as %.15g (enough digits to read back the value we mean). */
extern void json_member_double (struct json_writer *w, const char *name,
                                double v)
  __attribute__ ((__nonnull__ (1, 2)));

/* A double with DIGITS digits after the point (%.*f). */
extern void json_member_fixed (struct json_writer *w, const char *name,
                               int digits, double v)
  __attribute__ ((__nonnull__ (1, 2)));

/* A value that is already JSON text (e.g. a nested object). */
extern void json_member_raw (struct json_writer *w, const char *name,
                             const char *json)
  __attribute__ ((__nonnull__ (1, 2, 3)));

/* Open BUF of LEN bytes as a stream to write into; json_buffer_close
 * ends it, always NUL-terminated (cut short if it did not fit).
 * Returns NULL (BUF empty) if the stream cannot be opened.
 */
extern FILE *json_buffer_open (char *buf, size_t len)
  __attribute__ ((__nonnull__ (1)));
extern void json_buffer_close (FILE *fp, char *buf, size_t len)
  __attribute__ ((__nonnull__ (2)));

#endif /* NBDKIT_FLEECE_JSON_H */
