/* Fully connected: int8 input vector, int8 weights (out_size rows of in_size) in the pair-interleaved layout of
 * nn_kernels.h, int32 bias at the accumulator scale. The input is widened to int16 once; two rows are then
 * accumulated together so they share the input loads (DSP path: per 4 values, 1 weight-pair load, 1 input
 * load pair, 4 SXTB16, 4 SMLAD for 8 MACs). */
#include "nn_kernels.h"

void fully_connected_s8(const fully_connected_s8_params *p, const int8_t *input, const int8_t *weights,
                        const int32_t *bias, int8_t *output, int16_t *scratch)
{
    const int in_size = p->in_size, out_size = p->out_size, k_row = NN_ROW_LENGTH(in_size);
    const int shift = p->out_shift, act_min = p->act_min;
    const int whole = in_size & ~3;
    nn_widen_groups(input, scratch, whole, 4);
    for (int k = whole; k < k_row; k++) scratch[NN_WIDENED_INDEX(k, 4)] = k < in_size ? input[k] : 0;
    for (int n = 0; n < out_size; n += 2, weights += 2 * k_row) {
        const int second = n + 1 < out_size; /* else the pair's second row is zeros */
#if NN_USE_DSP
        int32_t a = bias[n], b = second ? bias[n + 1] : 0;
        const int16_t *x = scratch;
        for (const int8_t *v = weights, *end = weights + 2 * k_row; v != end; v += 8, x += 4) {
            const int32_t wa = nn_read_s32(v), wb = nn_read_s32(v + 4), even = nn_read_s32(x);
            const int32_t odd = nn_read_s32(x + 2);
            a = __smlad(__sxtb16(wa), even, a), b = __smlad(__sxtb16(wb), even, b);
            a = __smlad(nn_sxtb16_ror8(wa), odd, a), b = __smlad(nn_sxtb16_ror8(wb), odd, b);
        }
#else
        const int32_t a = nn_row_dot(weights, 8, scratch, 4, k_row / 4, bias[n]);
        const int32_t b = nn_row_dot(weights + 4, 8, scratch, 4, k_row / 4, second ? bias[n + 1] : 0);
#endif
        output[n] = nn_requantize(a, shift, act_min);
        if (second) output[n + 1] = nn_requantize(b, shift, act_min);
    }
}
