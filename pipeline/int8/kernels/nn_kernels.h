/* int8 kernels for the built-in backend's bundles (TFLite Micro / CMSIS-NN style, Glow's power-of-2 scales).
 * Tensors are int8 NHWC with offset 0; every rescale is a rounding shift. Weight rows are stored with each
 * group of 4 values in the order (0, 2, 1, 3) so that the DSP path gets the pairs (w0, w1) and (w2, w3) from
 * SXTB16 of the word and of the word rotated by 8; the portable path reads the same layout (nn_dot_s8_s16). */
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
} conv2d_s8_params;

typedef struct {
    uint16_t in_h, in_w, channels, out_h, out_w;
    uint8_t kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
} max_pool_s8_params;

/* float NCHW -> int8 NHWC: round-half-even(x * inv_scale), saturated (Glow's quantize). */
void quantize_f32_s8(const float *input, int8_t *output, int channels, int height, int width, float inv_scale);
/* int8 -> float: q * scale. */
void dequantize_s8_f32(const int8_t *input, float *output, int size, float scale);
/* weights: rows of kernel_h * kernel_w * in_c padded with zeros to a multiple of 4;
 * scratch: two im2col columns of that padded length (int16). */
void conv2d_s8(const conv2d_s8_params *p, const int8_t *input, const int8_t *weights, const int32_t *bias,
               int8_t *output, int16_t *scratch);
/* output[n] = requantize(bias[n] + sum_k input[k] * weights[n][k]); scratch: in_size int16. */
void fully_connected_s8(const int8_t *input, const int8_t *weights, const int32_t *bias, int8_t *output,
                        int in_size, int out_size, int out_shift, int act_min, int16_t *scratch);
void max_pool_s8(const max_pool_s8_params *p, const int8_t *input, int8_t *output);
/* output = saturate(nn_rescale(a, shift_a) + nn_rescale(b, shift_b)). */
void add_s8(const int8_t *a, const int8_t *b, int8_t *output, int size, int shift_a, int shift_b, int act_min);
void relu_s8(const int8_t *input, int8_t *output, int size);
void softmax_f32(const float *input, float *output, int size);

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

static inline void nn_write_s32(void *p, int32_t v) { memcpy(p, &v, 4); }
#endif /* NN_USE_DSP */

/* int8 -> int16 keeping the order (pairs (x0, x1), (x2, x3) for SMLAD). */
static inline void nn_s8_to_s16(const int8_t *src, int16_t *dst, int n)
{
#if NN_USE_DSP
    for (; n >= 4; n -= 4, src += 4, dst += 4) {
        const int32_t w = nn_read_s32(src);
        const uint32_t even = (uint32_t)__sxtb16(w);      /* x0, x2 */
        const uint32_t odd = (uint32_t)nn_sxtb16_ror8(w); /* x1, x3 */
        nn_write_s32(dst, (int32_t)((even & 0xFFFFu) | (odd << 16)));
        nn_write_s32(dst + 2, (int32_t)((even >> 16) | (odd & 0xFFFF0000u)));
    }
#endif
    for (; n > 0; n--) *dst++ = *src++;
}

/* Portable dot product of a weight row (groups in (0, 2, 1, 3) order) with an int16 column. */
static inline int32_t nn_dot_s8_s16(const int8_t *w, const int16_t *x, int k_total, int32_t acc)
{
    const int k4 = k_total & ~3;
    int k = 0;
    for (; k < k4; k += 4)
        acc += w[k] * x[k] + w[k + 2] * x[k + 1] + w[k + 1] * x[k + 2] + w[k + 3] * x[k + 3];
    for (; k < k_total; k++) acc += w[k] * x[k];
    return acc;
}

#ifdef __cplusplus
}
#endif
#endif /* NN_KERNELS_H */
