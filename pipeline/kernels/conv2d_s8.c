/* 2-D convolution, int8 NHWC input/output, int8 weights (out_c, kernel_h, kernel_w, in_c) in the (0, 2, 1, 3)
 * group order, int32 bias at the accumulator scale. DSP path: im2col of two output pixels to int16, then a
 * 2x2 (channels x pixels) SMLAD kernel, as CMSIS-NN arm_convolve_s8. Portable path: the same im2col and a
 * plain dot product per pixel. */
#include "nn_kernels.h"

/* The im2col column (kernel_h * kernel_w * in_c int16) of output pixel `pixel`; padding reads as 0. */
static void im2col_s16(const conv2d_s8_params *p, const int8_t *input, int pixel, int16_t *col)
{
    const int oy = pixel / p->out_w, ox = pixel % p->out_w;
    for (int ky = 0; ky < p->kernel_h; ky++) {
        const int iy = oy * p->stride_h - p->pad_top + ky;
        for (int kx = 0; kx < p->kernel_w; kx++, col += p->in_c) {
            const int ix = ox * p->stride_w - p->pad_left + kx;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w)
                memset(col, 0, (size_t)p->in_c * sizeof(int16_t));
            else
                nn_s8_to_s16(input + ((size_t)iy * p->in_w + ix) * p->in_c, col, p->in_c);
        }
    }
}

#if NN_USE_DSP

/* Two output pixels (columns col0, col1) for all output channels; out1 may be NULL for a single pixel. */
static void mat_mult_s8_s16(const conv2d_s8_params *p, const int8_t *weights, const int32_t *bias,
                            const int16_t *col0, const int16_t *col1, int8_t *out0, int8_t *out1)
{
    const int k_total = p->kernel_h * p->kernel_w * p->in_c;
    const int k4 = k_total & ~3;
    if (out1 == NULL) col1 = col0; /* computed and discarded: keeps one kernel */
    for (int oc = 0; oc < p->out_c; oc += 2) {
        const int pair = oc + 1 < p->out_c;
        const int8_t *w0 = weights + (size_t)oc * k_total;
        const int8_t *w1 = pair ? w0 + k_total : w0;
        int32_t s00 = bias[oc], s01 = bias[oc];
        int32_t s10 = bias[oc + pair], s11 = bias[oc + pair];
        const int16_t *a = col0, *b = col1;
        for (int k = 0; k < k4; k += 4, w0 += 4, w1 += 4, a += 4, b += 4) {
            const int32_t wa = nn_read_s32(w0), wb = nn_read_s32(w1);
            const int32_t wa01 = __sxtb16(wa), wa23 = nn_sxtb16_ror8(wa);
            const int32_t wb01 = __sxtb16(wb), wb23 = nn_sxtb16_ror8(wb);
            const int32_t a01 = nn_read_s32(a), a23 = nn_read_s32(a + 2);
            const int32_t b01 = nn_read_s32(b), b23 = nn_read_s32(b + 2);
            s00 = __smlad(wa01, a01, s00);
            s00 = __smlad(wa23, a23, s00);
            s01 = __smlad(wa01, b01, s01);
            s01 = __smlad(wa23, b23, s01);
            s10 = __smlad(wb01, a01, s10);
            s10 = __smlad(wb23, a23, s10);
            s11 = __smlad(wb01, b01, s11);
            s11 = __smlad(wb23, b23, s11);
        }
        for (int k = k4; k < k_total; k++, w0++, w1++, a++, b++) {
            s00 += *w0 * *a;
            s01 += *w0 * *b;
            s10 += *w1 * *a;
            s11 += *w1 * *b;
        }
        out0[oc] = nn_saturate(nn_rescale(s00, p->out_shift), p->act_min);
        if (out1) out1[oc] = nn_saturate(nn_rescale(s01, p->out_shift), p->act_min);
        if (pair) {
            out0[oc + 1] = nn_saturate(nn_rescale(s10, p->out_shift), p->act_min);
            if (out1) out1[oc + 1] = nn_saturate(nn_rescale(s11, p->out_shift), p->act_min);
        }
    }
}

void conv2d_s8(const conv2d_s8_params *p, const int8_t *input, const int8_t *weights, const int32_t *bias,
               int8_t *output, int16_t *scratch)
{
    const int k_total = p->kernel_h * p->kernel_w * p->in_c;
    const int pixels = p->out_h * p->out_w;
    int16_t *col0 = scratch, *col1 = scratch + k_total;
    for (int pixel = 0; pixel < pixels; pixel += 2) {
        int8_t *out0 = output + (size_t)pixel * p->out_c;
        const int two = pixel + 1 < pixels;
        im2col_s16(p, input, pixel, col0);
        if (two) im2col_s16(p, input, pixel + 1, col1);
        mat_mult_s8_s16(p, weights, bias, col0, col1, out0, two ? out0 + p->out_c : NULL);
    }
}

#else /* portable C: same im2col, one pixel at a time */

void conv2d_s8(const conv2d_s8_params *p, const int8_t *input, const int8_t *weights, const int32_t *bias,
               int8_t *output, int16_t *scratch)
{
    const int k_total = p->kernel_h * p->kernel_w * p->in_c;
    const int pixels = p->out_h * p->out_w;
    for (int pixel = 0; pixel < pixels; pixel++) {
        int8_t *out = output + (size_t)pixel * p->out_c;
        im2col_s16(p, input, pixel, scratch);
        for (int oc = 0; oc < p->out_c; oc++) {
            const int32_t acc = nn_dot_s8_s16(weights + (size_t)oc * k_total, scratch, k_total, bias[oc]);
            out[oc] = nn_saturate(nn_rescale(acc, p->out_shift), p->act_min);
        }
    }
}
#endif
