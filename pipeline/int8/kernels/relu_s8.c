/* ReLU on int8 (offset 0): max(x, 0), same scale. */
#include "nn_kernels.h"

void relu_s8(const int8_t *input, int8_t *output, int size)
{
    for (int i = 0; i < size; i++) output[i] = input[i] > 0 ? input[i] : 0;
}
