/* Element-wise add of two int8 tensors, each rescaled to the output's power-of-2 scale. */
#include "nn_kernels.h"

void add_s8(const add_s8_params *p, const int8_t *a, const int8_t *b, int8_t *output)
{
    const uint32_t size = p->size; /* locals: the int8 stores could alias *p */
    const int shift_a = p->shift_a, shift_b = p->shift_b, act_min = p->act_min;
    for (uint32_t i = 0; i < size; i++)
        output[i] = nn_saturate(nn_rescale(a[i], shift_a) + nn_rescale(b[i], shift_b), act_min);
}
