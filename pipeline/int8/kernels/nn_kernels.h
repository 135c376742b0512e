/* int8 kernels for the built-in backend's bundles (TFLite Micro / CMSIS-NN style, Glow's power-of-2 scales).
 * Tensors are int8 NHWC with offset 0; every rescale is a rounding shift.
 *
 * Layouts shared by the DSP and the portable paths (pipeline/int8/bundle.py writes the weights):
 * - weight rows (conv: kernel_h * kernel_w * in_c values in (kh, kw, c) order; fc: in_size values) are
 *   zero-padded to a multiple of 4 (k_row) and read 4 at a time ("groups"); rows are stored in pairs, the two
 *   rows' groups interleaved (row 2j group g, row 2j+1 group g, row 2j group g+1, ...); an odd last row is paired
 *   with a row of zeros.
 * - an int8 group (x0, x1, x2, x3) is widened to int16 as (x0, x2, x1, x3): SXTB16 of the word and of the word
 *   rotated by 8 give exactly those pairs, so widening needs no re-interleaving, and SXTB16 of a weight word and
 *   of it rotated by 8 give the matching weight pairs (w0, w2), (w1, w3) for SMLAD. */
#ifndef NN_KERNELS_H
#define NN_KERNELS_H

#include <stdint.h>
#include <string.h>

/* DSP fast path: Cortex-M cores with the DSP extension, or the host with the plain-C intrinsics shim. */
#if defined(NN_ACLE_SHIM)
#include "acle_shim.h"
#define NN_USE_DSP 1
#elif defined(__ARM_FEATURE_DSP) && !defined(NN_PORTABLE)
#include <arm_acle.h>
#define NN_USE_DSP 1
#else
#define NN_USE_DSP 0
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint16_t in_h, in_w, in_c;
    uint16_t out_h, out_w, out_c;
    uint8_t kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
    int8_t out_shift; /* accumulator -> output: rounding right shift (negative: left shift) */
    int8_t act_min;   /* -128, or 0 with a fused ReLU */
    uint8_t pool;     /* 2: a fused 2x2 stride-2 max pool (out_h, out_w are the pooled sizes); 1: none */
} conv2d_s8_params;

typedef struct {
    uint16_t in_size, out_size;
    int8_t out_shift, act_min;
} fully_connected_s8_params;

typedef struct {
    uint16_t channels, height, width;
    float inv_scale; /* 2^-exponent of the input's scale */
} quantize_f32_s8_params;

typedef struct {
    uint32_t size;
    float scale;
} dequantize_s8_f32_params;

typedef struct {
    uint32_t size;
    int8_t shift_a, shift_b, act_min; /* each input's shift to the output scale (nn_rescale) */
} add_s8_params;

typedef struct {
    uint32_t size;
} relu_s8_params, softmax_f32_params;

typedef struct {
    uint16_t in_h, in_w, channels, out_h, out_w;
    uint8_t kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
} max_pool_s8_params;

/* Per-layer timing, a firmware build option: with NN_LAYER_PROFILE the bundle calls nn_layer_mark(-1) on entry
 * and nn_layer_mark(k) after its k-th kernel call (the manifest's layer k); the application defines it. */
#if defined(NN_LAYER_PROFILE)
void nn_layer_mark(int layer);
#define NN_LAYER_MARK(layer) nn_layer_mark(layer)
#else
#define NN_LAYER_MARK(layer) ((void)0)
#endif

/* Output pixels per conv2d_s8 tile: the im2col columns it widens at once (pipeline/int8/ops.py sizes its scratch
 * from this). */
#define NN_CONV_TILE_PIXELS 4

/* float NCHW -> int8 NHWC: round-half-even(x * inv_scale), saturated (Glow's quantize). */
void quantize_f32_s8(const quantize_f32_s8_params *p, const float *input, int8_t *output);
/* int8 -> float: q * scale. */
void dequantize_s8_f32(const dequantize_s8_f32_params *p, const int8_t *input, float *output);
/* Scratch, planned by the bundle (pipeline/int8/ops.py Conv): `columns`, NN_CONV_TILE_PIXELS interleaved im2col
 * columns of k_row int16; `stage`, bytes for one patch row and the rows' remainders (patch rows are
 * kernel_w * in_c values; their whole groups come first in a weight row, every row's remainder after them).
 * With pool == 2 each output is requantize(max of the 2x2 window's accumulators): requantization is monotonic, so
 * this equals pooling the requantized conv output, and the pre-pool tensor is never stored. */
void conv2d_s8(const conv2d_s8_params *p, const int8_t *input, const int8_t *weights, const int32_t *bias,
               int8_t *output, int16_t *columns, int8_t *stage);
/* output[n] = requantize(bias[n] + sum_k input[k] * weights[n][k]); scratch: the input widened (k_row int16). */
void fully_connected_s8(const fully_connected_s8_params *p, const int8_t *input, const int8_t *weights,
                        const int32_t *bias, int8_t *output, int16_t *scratch);
void max_pool_s8(const max_pool_s8_params *p, const int8_t *input, int8_t *output);
/* output = saturate(nn_rescale(a, shift_a) + nn_rescale(b, shift_b)). */
void add_s8(const add_s8_params *p, const int8_t *a, const int8_t *b, int8_t *output);
void relu_s8(const relu_s8_params *p, const int8_t *input, int8_t *output);
void softmax_f32(const softmax_f32_params *p, const float *input, float *output);

/* Rounding shift (Glow's libjit_scale_i32i8 for a power-of-2 ratio): right by `shift` adding 2^(shift-1),
 * or left by -shift. Shifts are clamped to stay defined in int32; saturated results are unchanged. */
static inline int32_t nn_rescale(int32_t value, int32_t shift)
{
    if (shift > 0) {
        if (shift > 31) shift = 31;
        /* == (value + 2^(shift-1)) >> shift, without overflow */
        return ((value >> (shift - 1)) + 1) >> 1;
    }
    if (shift < 0) {
        int32_t left = -shift > 15 ? 15 : -shift;
        if (value > 65536) value = 65536;
        if (value < -65536) value = -65536;
        return value * (1 << left);
    }
    return value;
}

static inline int8_t nn_saturate(int32_t value, int32_t act_min)
{
    if (value < act_min) value = act_min;
    if (value > 127) value = 127;
    return (int8_t)value;
}

/* An int32 accumulator back to int8: rounding shift, then clamp to [act_min, 127] (act_min 0 = fused ReLU). */
static inline int8_t nn_requantize(int32_t acc, int32_t shift, int32_t act_min)
{
    return nn_saturate(nn_rescale(acc, shift), act_min);
}

#if NN_USE_DSP
/* SXTB16 of the word rotated right by 8 (bytes 1 and 3). GCC's arm_acle.h has no __ror and does not fold a
 * rotate into SXTB16, so the target uses the instruction's rotate operand directly (as CMSIS __SXTB16_RORn). */
static inline int32_t nn_sxtb16_ror8(int32_t x)
{
#if defined(NN_ACLE_SHIM)
    uint32_t u = (uint32_t)x;
    return __sxtb16((int32_t)((u >> 8) | (u << 24)));
#else
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
#endif
}

static inline int32_t nn_read_s32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4); /* unaligned-safe; one LDR on Cortex-M7/M33 */
    return v;
}
#endif /* NN_USE_DSP */

/* Rows and im2col columns are zero-padded to a multiple of 4 values. */
#define NN_ROW_LENGTH(values) (((values) + 3) & ~3)
/* int16 index of value k of a widened group sequence whose groups are `group_stride` int16 apart. */
#define NN_WIDENED_INDEX(k, group_stride) (((k) >> 2) * (group_stride) + ((k) & 1) * 2 + (((k) >> 1) & 1))

/* n int8 values (n % 4 == 0, src word-aligned or not) -> int16 groups (x0, x2, x1, x3), `group_stride` apart. */
static inline void nn_widen_groups(const int8_t *src, int16_t *dst, int n, int group_stride)
{
#if NN_USE_DSP
    for (; n > 0; n -= 4, src += 4, dst += group_stride) { /* one LDR, two SXTB16, one STRD */
        const int32_t w = nn_read_s32(src);
        const uint64_t pairs = (uint32_t)__sxtb16(w) | (uint64_t)(uint32_t)nn_sxtb16_ror8(w) << 32;
        memcpy(dst, &pairs, 8);
    }
#else
    for (; n > 0; n -= 4, src += 4, dst += group_stride)
        dst[0] = src[0], dst[1] = src[2], dst[2] = src[1], dst[3] = src[3];
#endif
}

/* One weight group (int8, natural order) times one widened group (int16 x0, x2, x1, x3). */
static inline int32_t nn_dot_group(const int8_t *w, const int16_t *x)
{
    return w[0] * x[0] + w[2] * x[1] + w[1] * x[2] + w[3] * x[3];
}

/* acc + one weight row . one widened vector: `groups` groups, w_step bytes and x_step int16 apart. */
static inline int32_t nn_row_dot(const int8_t *w, int w_step, const int16_t *x, int x_step, int groups, int32_t acc)
{
    for (int g = 0; g < groups; g++, w += w_step, x += x_step) acc += nn_dot_group(w, x);
    return acc;
}

#ifdef __cplusplus
}
#endif
#endif /* NN_KERNELS_H */
