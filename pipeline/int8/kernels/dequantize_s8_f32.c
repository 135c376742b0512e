/* Output placeholder: int8 -> float, q * scale (exact: the scale is a power of 2). */
#include "nn_kernels.h"

void dequantize_s8_f32(const dequantize_s8_f32_params *p, const int8_t *input, float *output)
{
    const float scale = p->scale;
    for (uint32_t i = 0; i < p->size; i++) output[i] = (float)input[i] * scale;
}
