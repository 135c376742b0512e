/* 2-D convolution, int8 NHWC input/output, int32 bias at the accumulator scale. Weights: one row per output
 * channel of kernel_h * kernel_w * in_c values in (kh, kw, c) order, zero-padded to a multiple of 4 (k_row)
 * and stored in the (0, 2, 1, 3) group order. Each output pixel's patch is first copied to an int16 column
 * (im2col); the DSP path then runs a 2x2 (channels x pixels) SMLAD kernel as CMSIS-NN arm_convolve_s8, the
 * portable path a plain dot product per pixel. */
#include "nn_kernels.h"

/* 8 bytes (4 values) of an int16 column; columns are 8-byte aligned (64-byte scratch, k_row % 4 == 0). */
typedef uint64_t __attribute__((may_alias)) nn_u64_alias;

static inline int conv_row_length(const conv2d_s8_params *p)
{
    return (p->kernel_h * p->kernel_w * p->in_c + 3) & ~3;
}

/* The im2col column of output pixel `pixel` (k_row int16); padding and the row's tail read as 0.
 * Parameters are copied to locals: the int16 stores could otherwise alias the uint16 fields of *p. */
static void im2col_s16(const conv2d_s8_params *p, const int8_t *input, int pixel, int16_t *col)
{
    const int in_h = p->in_h, in_w = p->in_w, in_c = p->in_c, kernel_h = p->kernel_h, kernel_w = p->kernel_w;
    const int oy = pixel / p->out_w, ox = pixel % p->out_w;
    const int y0 = oy * p->stride_h - p->pad_top, x0 = ox * p->stride_w - p->pad_left;
    int16_t *const end = col + conv_row_length(p);
    for (int iy = y0; iy < y0 + kernel_h; iy++) {
        for (int ix = x0; ix < x0 + kernel_w; ix++, col += in_c) {
            if (iy < 0 || iy >= in_h || ix < 0 || ix >= in_w)
                memset(col, 0, (size_t)in_c * sizeof(int16_t));
            else
                nn_s8_to_s16(input + ((size_t)iy * in_w + ix) * in_c, col, in_c);
        }
    }
    while (col < end) *col++ = 0;
}

#if NN_USE_DSP
/* Two output pixels (columns col0, col1) for output channels [0, out_c & ~1). */
static void mat_mult_2x2_s8_s16(const int8_t *weights, const int32_t *bias, const int16_t *col0,
                                const int16_t *col1, int8_t *out0, int8_t *out1, int k_row, int out_c, int shift,
                                int act_min)
{
    for (int oc = 0; oc + 1 < out_c; oc += 2) {
        const int8_t *w0 = weights + (size_t)oc * k_row, *w1 = w0 + k_row;
        const nn_u64_alias *a = (const nn_u64_alias *)col0, *b = (const nn_u64_alias *)col1;
        int32_t s00 = bias[oc], s01 = bias[oc], s10 = bias[oc + 1], s11 = bias[oc + 1];
        /* Per 4 weights of 2 rows x 4 values of 2 columns: 4 loads, 4 SXTB16, 8 SMLAD (M7: 20 instructions). */
        for (const int8_t *w_end = w0 + k_row; w0 != w_end; w0 += 4, w1 += 4) {
            const int32_t wa = nn_read_s32(w0), wb = nn_read_s32(w1);
            const uint64_t av = *a++, bv = *b++;
            int32_t x = (int32_t)av, y = (int32_t)bv, w = __sxtb16(wa); /* x, y: values 0, 1 */
            s00 = __smlad(w, x, s00);
            s01 = __smlad(w, y, s01);
            w = __sxtb16(wb);
            s10 = __smlad(w, x, s10);
            s11 = __smlad(w, y, s11);
            x = (int32_t)(av >> 32); /* values 2, 3 */
            y = (int32_t)(bv >> 32);
            w = nn_sxtb16_ror8(wa);
            s00 = __smlad(w, x, s00);
            s01 = __smlad(w, y, s01);
            w = nn_sxtb16_ror8(wb);
            s10 = __smlad(w, x, s10);
            s11 = __smlad(w, y, s11);
        }
        out0[oc] = nn_requantize(s00, shift, act_min);
        out1[oc] = nn_requantize(s01, shift, act_min);
        out0[oc + 1] = nn_requantize(s10, shift, act_min);
        out1[oc + 1] = nn_requantize(s11, shift, act_min);
    }
}

void conv2d_s8(const conv2d_s8_params *p, const int8_t *input, const int8_t *weights, const int32_t *bias,
               int8_t *output, int16_t *scratch)
{
    const int pixels = p->out_h * p->out_w, out_c = p->out_c, k_row = conv_row_length(p);
    const int shift = p->out_shift, act_min = p->act_min;
    int16_t *col0 = scratch, *col1 = scratch + k_row;
    int pixel = 0;
    for (; pixel + 1 < pixels; pixel += 2) {
        int8_t *out0 = output + (size_t)pixel * out_c, *out1 = out0 + out_c;
        im2col_s16(p, input, pixel, col0);
        im2col_s16(p, input, pixel + 1, col1);
        mat_mult_2x2_s8_s16(weights, bias, col0, col1, out0, out1, k_row, out_c, shift, act_min);
        if (out_c & 1) { /* last channel of an odd count */
            const int8_t *w = weights + (size_t)(out_c - 1) * k_row;
            out0[out_c - 1] = nn_requantize(nn_dot_s8_s16(w, col0, k_row, bias[out_c - 1]), shift, act_min);
            out1[out_c - 1] = nn_requantize(nn_dot_s8_s16(w, col1, k_row, bias[out_c - 1]), shift, act_min);
        }
    }
    if (pixel < pixels) { /* last pixel of an odd count */
        int8_t *out = output + (size_t)pixel * out_c;
        im2col_s16(p, input, pixel, col0);
        for (int oc = 0; oc < out_c; oc++)
            out[oc] = nn_requantize(nn_dot_s8_s16(weights + (size_t)oc * k_row, col0, k_row, bias[oc]), shift,
                                    act_min);
    }
}

#else /* portable C */

void conv2d_s8(const conv2d_s8_params *p, const int8_t *input, const int8_t *weights, const int32_t *bias,
               int8_t *output, int16_t *scratch)
{
    const int k_row = conv_row_length(p);
    const int pixels = p->out_h * p->out_w;
    for (int pixel = 0; pixel < pixels; pixel++) {
        int8_t *out = output + (size_t)pixel * p->out_c;
        im2col_s16(p, input, pixel, scratch);
        for (int oc = 0; oc < p->out_c; oc++)
            out[oc] = nn_requantize(nn_dot_s8_s16(weights + (size_t)oc * k_row, scratch, k_row, bias[oc]),
                                 p->out_shift, p->act_min);
    }
}
#endif
