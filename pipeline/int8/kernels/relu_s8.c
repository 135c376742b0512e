/* ReLU on int8 (offset 0): max(x, 0), same scale. */
#include "nn_kernels.h"

void relu_s8(const relu_s8_params *p, const int8_t *input, int8_t *output)
{
    const uint32_t size = p->size; /* a local: the int8 stores could alias *p */
    for (uint32_t i = 0; i < size; i++) output[i] = input[i] > 0 ? input[i] : 0;
}
