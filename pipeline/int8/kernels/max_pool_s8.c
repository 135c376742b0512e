/* Max pooling, int8 NHWC; padded positions are ignored. Output keeps the input's scale. */
#include "nn_kernels.h"

void max_pool_s8(const max_pool_s8_params *p, const int8_t *input, int8_t *output)
{
    for (int oy = 0; oy < p->out_h; oy++) {
        for (int ox = 0; ox < p->out_w; ox++) {
            int8_t *out = output + ((size_t)oy * p->out_w + ox) * p->channels;
            for (int c = 0; c < p->channels; c++) out[c] = -128;
            for (int ky = 0; ky < p->kernel_h; ky++) {
                const int iy = oy * p->stride_h - p->pad_top + ky;
                if (iy < 0 || iy >= p->in_h) continue;
                for (int kx = 0; kx < p->kernel_w; kx++) {
                    const int ix = ox * p->stride_w - p->pad_left + kx;
                    if (ix < 0 || ix >= p->in_w) continue;
                    const int8_t *x = input + ((size_t)iy * p->in_w + ix) * p->channels;
                    for (int c = 0; c < p->channels; c++)
                        if (x[c] > out[c]) out[c] = x[c];
                }
            }
        }
    }
}
