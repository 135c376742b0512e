/* Output placeholder: int8 -> float, q * scale (exact: the scale is a power of 2). */
#include "nn_kernels.h"

void dequantize_s8_f32(const int8_t *input, float *output, int size, float scale)
{
    for (int i = 0; i < size; i++) output[i] = (float)input[i] * scale;
}
