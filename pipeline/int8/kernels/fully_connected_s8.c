/* Fully connected: int8 input vector, int8 weights (out_size, in_size) in the (0, 2, 1, 3) group order,
 * int32 bias at the accumulator scale. The input is widened to int16 once; the DSP path then uses one SMLAD
 * per weight pair, the portable path a plain dot product. */
#include "nn_kernels.h"

void fully_connected_s8(const int8_t *input, const int8_t *weights, const int32_t *bias, int8_t *output,
                        int in_size, int out_size, int out_shift, int act_min, int16_t *scratch)
{
    nn_s8_to_s16(input, scratch, in_size);
    for (int n = 0; n < out_size; n++) {
        const int8_t *w = weights + (size_t)n * in_size;
#if NN_USE_DSP
        const int16_t *x = scratch;
        const int k4 = in_size & ~3;
        int32_t acc = bias[n];
        for (int k = 0; k < k4; k += 4, w += 4, x += 4) {
            const int32_t wk = nn_read_s32(w);
            acc = __smlad(__sxtb16(wk), nn_read_s32(x), acc);
            acc = __smlad(nn_sxtb16_ror8(wk), nn_read_s32(x + 2), acc);
        }
        for (int k = k4; k < in_size; k++) acc += *w++ * *x++;
#else
        const int32_t acc = nn_dot_s8_s16(w, scratch, in_size, bias[n]);
#endif
        output[n] = nn_requantize(acc, out_shift, act_min);
    }
}
