/* 2-D convolution, int8 NHWC input/output, int32 bias at the accumulator scale, with an optional fused 2x2
 * stride-2 max pool. Weights: rows in the pair-interleaved layout of nn_kernels.h, each row holding every patch
 * row's whole groups ((kw, c) order), then all patch rows' remainders (pipeline/int8/ops.py Conv.k_order).
 * Work goes in tiles of 4 output pixels (with the pool: the 4 pixels of one pooling window), whose patches are
 * first widened to int16 im2col columns; the 4 columns are interleaved group by group in the scratch, so one
 * pointer with constant offsets reads all of them. Per tile, 2 output channels x 4 pixels are accumulated at
 * once (DSP path: per 4 values, 2 weight-pair loads + 4 SXTB16 + 8 column loads + 16 SMLAD: 30 instructions for
 * 32 MACs, plus 2 for the loop every second group). */
#include "nn_kernels.h"

#define TILE_PIXELS NN_CONV_TILE_PIXELS
#define GROUP_STRIDE (4 * TILE_PIXELS) /* int16 from one group of a column to its next group */

static inline int conv_row_length(const conv2d_s8_params *p)
{
    return NN_ROW_LENGTH(p->kernel_h * p->kernel_w * p->in_c);
}

/* n int8 values (n % 4 == 0, src at any byte offset) -> widened groups of a column, GROUP_STRIDE apart
 * (nn_widen_groups). On the Arm targets in assembly, two groups per iteration: 5 instructions per group where
 * GCC's loop takes 8 (it stores the two words separately and does not unroll). */
static inline void widen_column(const int8_t *src, int16_t *dst, int n)
{
#if NN_USE_DSP && !defined(NN_ACLE_SHIM)
    const int8_t *const end = src + n;
    int32_t low, high;
    if (n > 0) /* volatile: its only effect is the stores */
        __asm__ volatile("tst    %[n], #4\n\t" /* an odd number of groups: enter at the second copy */
                         "bne    2f\n\t"
                         "1:\n\t"
                         "ldr    %[low], [%[src]], #4\n\t"
                         "sxtb16 %[high], %[low], ror #8\n\t"
                         "sxtb16 %[low], %[low]\n\t"
                         "strd   %[low], %[high], [%[dst]], #32\n\t" /* GROUP_STRIDE int16 */
                         "2:\n\t"
                         "ldr    %[low], [%[src]], #4\n\t"
                         "sxtb16 %[high], %[low], ror #8\n\t"
                         "sxtb16 %[low], %[low]\n\t"
                         "strd   %[low], %[high], [%[dst]], #32\n\t"
                         "cmp    %[src], %[end]\n\t"
                         "bne    1b"
                         : [src] "+r"(src), [dst] "+r"(dst), [low] "=&r"(low), [high] "=&r"(high)
                         : [n] "r"(n), [end] "r"(end)
                         : "cc", "memory");
#else
    nn_widen_groups(src, dst, n, GROUP_STRIDE);
#endif
}

/* The widened patch of conv output pixel (oy, ox) into column `col` (groups GROUP_STRIDE apart), in the weights'
 * order: the whole groups of each patch row, then every row's remainder (kernel_w * in_c % 4 values) gathered in
 * `stage` and widened behind them. A patch row is kernel_w * in_c contiguous values (NHWC): inside the input it is
 * read in place, from any byte offset; a row crossing the padding is first assembled in `stage`, zeros outside.
 * Parameters are copied to locals: the stores could otherwise alias *p's fields. */
static void im2col_s16(const conv2d_s8_params *p, const int8_t *input, int oy, int ox, int16_t *col, int8_t *stage)
{
    const int in_h = p->in_h, in_w = p->in_w, in_c = p->in_c, kernel_h = p->kernel_h, kernel_w = p->kernel_w;
    const int y0 = oy * p->stride_h - p->pad_top, x0 = ox * p->stride_w - p->pad_left;
    const int row_values = kernel_w * in_c, whole = row_values & ~3, rest = row_values - whole;
    /* inside pixels of a patch row: [left, right) */
    const int left = x0 < 0 ? (-x0 < kernel_w ? -x0 : kernel_w) : 0;
    const int right = x0 + kernel_w > in_w ? (in_w - x0 > left ? in_w - x0 : left) : kernel_w;
    int8_t *const remainders = stage + row_values;
    for (int r = 0, iy = y0; r < kernel_h; r++, iy++, col += (whole >> 2) * GROUP_STRIDE) {
        const int inside = iy >= 0 && iy < in_h;
        const int8_t *row = stage;
        if (inside && left == 0 && right == kernel_w) {
            row = input + ((size_t)iy * in_w + x0) * in_c;
        } else {
            memset(stage, 0, (size_t)row_values);
            if (inside)
                memcpy(stage + left * in_c, input + ((size_t)iy * in_w + x0 + left) * in_c,
                       (size_t)(right - left) * in_c);
        }
        widen_column(row, col, whole);
        for (int j = 0; j < rest; j++) remainders[r * rest + j] = row[whole + j];
    }
    widen_column(remainders, col, NN_ROW_LENGTH(kernel_h * rest)); /* conv2d_s8 zeroed their padding */
}

/* One group of the tile (4 values of 2 weight rows x 4 columns): 32 instructions for 32 MACs. */
#define TILE_GROUP_ASM \
    "ldrd   %[ta], %[tb], [%[w]]\n\t" \
    "sxtb16 %[ta], %[ta]\n\t" \
    "sxtb16 %[tb], %[tb]\n\t" \
    "ldr    %[x], [%[c]], #32\n\t" \
    "smlad  %[a0], %[ta], %[x], %[a0]\n\t" \
    "smlad  %[b0], %[tb], %[x], %[b0]\n\t" \
    "ldr    %[x], [%[c], #-24]\n\t" \
    "smlad  %[a1], %[ta], %[x], %[a1]\n\t" \
    "smlad  %[b1], %[tb], %[x], %[b1]\n\t" \
    "ldr    %[x], [%[c], #-16]\n\t" \
    "smlad  %[a2], %[ta], %[x], %[a2]\n\t" \
    "smlad  %[b2], %[tb], %[x], %[b2]\n\t" \
    "ldr    %[x], [%[c], #-8]\n\t" \
    "smlad  %[a3], %[ta], %[x], %[a3]\n\t" \
    "smlad  %[b3], %[tb], %[x], %[b3]\n\t" \
    "ldrd   %[ta], %[tb], [%[w]], #8\n\t" \
    "sxtb16 %[ta], %[ta], ror #8\n\t" \
    "sxtb16 %[tb], %[tb], ror #8\n\t" \
    "ldr    %[x], [%[c], #-28]\n\t" \
    "smlad  %[a0], %[ta], %[x], %[a0]\n\t" \
    "smlad  %[b0], %[tb], %[x], %[b0]\n\t" \
    "ldr    %[x], [%[c], #-20]\n\t" \
    "smlad  %[a1], %[ta], %[x], %[a1]\n\t" \
    "smlad  %[b1], %[tb], %[x], %[b1]\n\t" \
    "ldr    %[x], [%[c], #-12]\n\t" \
    "smlad  %[a2], %[ta], %[x], %[a2]\n\t" \
    "smlad  %[b2], %[tb], %[x], %[b2]\n\t" \
    "ldr    %[x], [%[c], #-4]\n\t" \
    "smlad  %[a3], %[ta], %[x], %[a3]\n\t" \
    "smlad  %[b3], %[tb], %[x], %[b3]\n\t"

/* Accumulators of the tile's 4 columns for the channel pair at w (pair-interleaved rows):
 * s[0..3] for the first channel, s[4..7] for the second. */
static inline __attribute__((always_inline)) void tile_2x4(const int8_t *w, const int16_t *cols, int groups,
                                                           int32_t bias0, int32_t bias1, int32_t *s)
{
#if NN_USE_DSP && defined(NN_ACLE_SHIM)
    /* The host's check of the DSP path: the operations of the assembly below, in the same order. */
    for (int pixel = 0; pixel < TILE_PIXELS; pixel++) s[pixel] = bias0, s[TILE_PIXELS + pixel] = bias1;
    for (const int16_t *c = cols, *end = cols + groups * GROUP_STRIDE; c != end; c += GROUP_STRIDE, w += 8) {
        for (int odd = 0; odd < 2; odd++) { /* (w0, w2) with the columns' even words, then (w1, w3) */
            const int32_t ta = odd ? nn_sxtb16_ror8(nn_read_s32(w)) : __sxtb16(nn_read_s32(w));
            const int32_t tb = odd ? nn_sxtb16_ror8(nn_read_s32(w + 4)) : __sxtb16(nn_read_s32(w + 4));
            for (int pixel = 0; pixel < TILE_PIXELS; pixel++) {
                const int32_t x = nn_read_s32(c + 4 * pixel + 2 * odd);
                s[pixel] = __smlad(ta, x, s[pixel]);
                s[TILE_PIXELS + pixel] = __smlad(tb, x, s[TILE_PIXELS + pixel]);
            }
        }
    }
#elif NN_USE_DSP
    int32_t a0 = bias0, a1 = bias0, a2 = bias0, a3 = bias0, b0 = bias1, b1 = bias1, b2 = bias1, b3 = bias1;
    const int16_t *c = cols, *const end = cols + groups * GROUP_STRIDE;
    /* Assembly because GCC spills 3 of the 8 accumulators of the C loop (41 instructions per 32 MACs):
     * 8 accumulators + 3 pointers + 3 temporaries use all 14 allocatable registers, so the weight words are
     * loaded twice (once per SXTB16 rotation) instead of being held. 32 instructions per 32 MACs. */
    int32_t ta, tb, x;
    /* The loop does two groups (62 instructions per 64 MACs); an odd count enters at the second. */
    if (c != end)
        __asm__("sub    %[x], %[end], %[c]\n\t"
                "tst    %[x], #32\n\t" /* one group of the 4 columns is 32 bytes */
                "bne    2f\n\t"
                "1:\n\t" TILE_GROUP_ASM
                "2:\n\t" TILE_GROUP_ASM
                "cmp    %[c], %[end]\n\t"
                "bne    1b"
                : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [b0] "+r"(b0), [b1] "+r"(b1),
                  [b2] "+r"(b2), [b3] "+r"(b3), [w] "+r"(w), [c] "+r"(c), [ta] "=&r"(ta), [tb] "=&r"(tb),
                  [x] "=&r"(x)
                : [end] "r"(end)
                : "cc", "memory");
    s[0] = a0, s[1] = a1, s[2] = a2, s[3] = a3, s[4] = b0, s[5] = b1, s[6] = b2, s[7] = b3;
#else
    for (int pixel = 0; pixel < TILE_PIXELS; pixel++) {
        s[pixel] = nn_row_dot(w, 8, cols + 4 * pixel, GROUP_STRIDE, groups, bias0);
        s[TILE_PIXELS + pixel] = nn_row_dot(w + 4, 8, cols + 4 * pixel, GROUP_STRIDE, groups, bias1);
    }
#endif
}

static inline int32_t max4(const int32_t *s)
{
    const int32_t m = s[0] > s[1] ? s[0] : s[1], n = s[2] > s[3] ? s[2] : s[3];
    return m > n ? m : n;
}

/* Requantize `count` accumulators to outputs `step` bytes apart. Out of line: shifts outside 1..24 are rare (left
 * shifts: an output scale finer than the accumulator's), and inlining them at every store would cost flash. */
static __attribute__((noinline, cold)) void store_general(const int32_t *s, int8_t *out, int count, int step,
                                                          int shift, int act_min)
{
    for (int pixel = 0; pixel < count; pixel++) out[pixel * step] = nn_requantize(s[pixel], shift, act_min);
}

/* Requantize with the rounding 2^(shift-1) already in the accumulator (added to the bias): one shift, then the
 * clamp to [act_min, 127], one SSAT on DSP cores. */
static inline int32_t requantize_rounded(int32_t acc, int shift, int act_min)
{
    int32_t value = acc >> shift;
#if NN_USE_DSP
    value = __ssat(value, 8);
#else
    value = value > 127 ? 127 : value < -128 ? -128 : value;
#endif
    return value < act_min ? act_min : value; /* int32: the byte store truncates, no sign extension needed */
}

static void tile_outputs(const conv2d_s8_params *p, const int8_t *weights, const int32_t *bias,
                         const int16_t *cols, int8_t *out, int count)
{
    const int out_c = p->out_c, k_row = conv_row_length(p), groups = k_row / 4, shift = p->out_shift;
    const int act_min = p->act_min, pooled = p->pool == 2;
    /* Shifts 1..24 fold their rounding into the bias: 2^23 at most, which could overflow int32 only with more than
     * 65,000 products of 128 x 128 on top of the largest bias (2^30). */
    const int rounded = shift >= 1 && shift <= 24;
    const int32_t rounding = rounded ? (int32_t)1 << (shift - 1) : 0;
    int32_t s[2 * TILE_PIXELS];
    int8_t sink; /* the second channel of the last pair when out_c is odd (its weight row is zeros) */
    for (int oc = 0; oc < out_c; oc += 2, weights += 2 * k_row) {
        const int second = oc + 1 < out_c;
        int8_t *const out2 = second ? out + oc + 1 : &sink;
        const int step2 = second ? out_c : 0;
        tile_2x4(weights, cols, groups, bias[oc] + rounding, (second ? bias[oc + 1] : 0) + rounding, s);
        if (pooled) { /* requantize(max of the window's 4 accumulators): exact, requantization is monotonic */
            s[0] = max4(s), s[TILE_PIXELS] = max4(s + TILE_PIXELS);
        }
        if (!rounded) {
            store_general(s, out + oc, pooled ? 1 : count, out_c, shift, act_min);
            store_general(s + TILE_PIXELS, out2, pooled ? 1 : count, step2, shift, act_min);
        } else if (pooled) {
            out[oc] = requantize_rounded(s[0], shift, act_min);
            *out2 = requantize_rounded(s[TILE_PIXELS], shift, act_min);
        } else {
            for (int pixel = 0; pixel < count; pixel++) {
                out[oc + pixel * out_c] = requantize_rounded(s[pixel], shift, act_min);
                out2[pixel * step2] = requantize_rounded(s[TILE_PIXELS + pixel], shift, act_min);
            }
        }
    }
}

void conv2d_s8(const conv2d_s8_params *p, const int8_t *input, const int8_t *weights, const int32_t *bias,
               int8_t *output, int16_t *columns, int8_t *stage)
{
    const int out_w = p->out_w, out_c = p->out_c, pixels = p->out_h * out_w, pooled = p->pool == 2;
    const int row_values = p->kernel_w * p->in_c;
    /* The remainders' padding to whole groups, zeroed once: the patches write only the remainders themselves. */
    memset(stage + row_values, 0, (size_t)NN_ROW_LENGTH(p->kernel_h * (row_values & 3)));
    /* A step: one pooled pixel (its 2x2 window), or 4 pixels in order (a short last step repeats its last one). */
    for (int first = 0; first < pixels; first += pooled ? 1 : TILE_PIXELS) {
        const int count = pooled ? TILE_PIXELS : (pixels - first < TILE_PIXELS ? pixels - first : TILE_PIXELS);
        for (int slot = 0; slot < TILE_PIXELS; slot++) {
            const int q = first + (slot < count ? slot : count - 1);
            const int oy = pooled ? 2 * (first / out_w) + slot / 2 : q / out_w;
            const int ox = pooled ? 2 * (first % out_w) + slot % 2 : q % out_w;
            im2col_s16(p, input, oy, ox, columns + 4 * slot, stage);
        }
        tile_outputs(p, weights, bias, columns, output + (size_t)first * out_c, count);
    }
}
