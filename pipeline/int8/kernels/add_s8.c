/* Element-wise add of two int8 tensors, each rescaled to the output's power-of-2 scale. */
#include "nn_kernels.h"

void add_s8(const int8_t *a, const int8_t *b, int8_t *output, int size, int shift_a, int shift_b, int act_min)
{
    for (int i = 0; i < size; i++)
        output[i] = nn_saturate(nn_rescale(a[i], shift_a) + nn_rescale(b[i], shift_b), act_min);
}
