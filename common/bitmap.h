/* nbdkit-fleece: bitmaps of 1, 2, 4 or 8 bits per block.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Not thread safe: callers hold the lock that guards the bitmap.
 */

#ifndef NBDKIT_FLEECE_BITMAP_H
#define NBDKIT_FLEECE_BITMAP_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <assert.h>

struct bitmap {
  unsigned bpb;                 /* bits per block: 1, 2, 4 or 8 */
  uint64_t nblocks;             /* number of blocks */
  uint8_t *bits;                /* ceil (nblocks * bpb / 8) bytes */
};

/* Size in bytes of the bit array. */
static inline size_t
bitmap_bytes (const struct bitmap *bm)
{
  return (bm->nblocks * bm->bpb + 7) / 8;
}

/* Allocate a bitmap with every block 0.  Returns -1 on ENOMEM. */
static inline int
bitmap_init (struct bitmap *bm, unsigned bpb, uint64_t nblocks)
{
  assert (bpb == 1 || bpb == 2 || bpb == 4 || bpb == 8);
  bm->bpb = bpb;
  bm->nblocks = nblocks;
  bm->bits = calloc (bitmap_bytes (bm) ? bitmap_bytes (bm) : 1, 1);
  return bm->bits ? 0 : -1;
}

static inline void
bitmap_free (struct bitmap *bm)
{
  free (bm->bits);
  bm->bits = NULL;
}

/* Value of block blk. */
static inline unsigned
bitmap_get (const struct bitmap *bm, uint64_t blk)
{
  uint64_t bit = blk * bm->bpb;

  assert (blk < bm->nblocks);
  return (bm->bits[bit / 8] >> (bit % 8)) & ((1u << bm->bpb) - 1);
}

/* Set block blk to v. */
static inline void
bitmap_set (struct bitmap *bm, uint64_t blk, unsigned v)
{
  uint64_t bit = blk * bm->bpb;
  unsigned mask = ((1u << bm->bpb) - 1) << (bit % 8);

  assert (blk < bm->nblocks);
  assert (v < (1u << bm->bpb));
  bm->bits[bit / 8] = (bm->bits[bit / 8] & ~mask) | (v << (bit % 8));
}

/* Set every block to v. */
static inline void
bitmap_fill (struct bitmap *bm, unsigned v)
{
  unsigned byte = 0, i;

  for (i = 0; i < 8; i += bm->bpb)
    byte |= v << i;
  memset (bm->bits, byte, bitmap_bytes (bm));
}

/* Number of blocks set, for a bitmap of 1 bit per block: a byte at a
 * time, not a block at a time (callers count large bitmaps under
 * locks that writers wait for).
 */
static inline uint64_t
bitmap_count_ones (const struct bitmap *bm)
{
  uint64_t full = bm->nblocks / 8, n = 0, i;

  assert (bm->bpb == 1);
  for (i = 0; i < full; ++i)
    n += __builtin_popcount (bm->bits[i]);
  /* bitmap_fill sets the padding bits of the last byte too. */
  if (bm->nblocks % 8)
    n += __builtin_popcount (bm->bits[full] &
                             ((1u << (bm->nblocks % 8)) - 1));
  return n;
}

#endif /* NBDKIT_FLEECE_BITMAP_H */
